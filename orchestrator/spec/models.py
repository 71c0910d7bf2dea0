"""The TrainingJob spec: the one source of truth.

The JSON Schema (`shardctl schema`), the CRD's openAPIV3Schema and the reference
docs are generated from these models. Pydantic checks shapes and types here;
rules that relate fields to each other (accelerate's FSDP/DeepSpeed restrictions) live in
`orchestrator.compile.rules`, once, so `validate` and `render` agree.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.spec.quantity import BYTES_PATTERN, COUNT_PATTERN, MAX_COUNT, parse_bytes, parse_count
from orchestrator.spec.regex import check as check_pattern
from orchestrator.spec.text import first_unsafe

API_VERSION = "shardctl.dev/v1alpha1"
KIND = "TrainingJob"

Target = Literal["local", "slurm", "kubernetes"]
CONTAINER_TARGETS = frozenset({"kubernetes"})  # targets that run the job in a container image
# Which entrypoint.env_from sources each target can honour: a cluster's Secrets where pods run; the submitting
# shell's variables and private files where shardctl itself starts the run.
ENV_SOURCE_KINDS: dict[str, frozenset[str]] = {"local": frozenset({"env", "file"}), "slurm": frozenset({"env", "file"}),
                                               "kubernetes": frozenset({"secret"})}
Backend = Literal["fsdp", "deepspeed"]
# Backend-neutral sharding levels. `optimizer` is ZeRO-1, which has no FSDP twin.
Sharding = Literal["none", "optimizer", "grad_op", "full", "hybrid"]
Mixed = Literal["no", "fp16", "bf16"]
LoadDtype = Literal["fp32", "bf16"]
OffloadDevice = Literal["none", "cpu", "nvme"]
Rung = Literal[
    "shard_more",
    "activation_checkpointing",
    "halve_micro_batch",
    "offload_optimizer_cpu",
    "offload_params_cpu",
    "offload_nvme",
    "switch_backend",
]

PLACEHOLDERS = ("micro_batch", "grad_accum", "checkpoint_dir", "attempt", "seq_len", "world_size")

# Every name check matches the whole value (`fullmatch`): with `match` or `search`, a pattern ending in
# `$` also accepts one trailing newline, and a name such as "quickstart\n" would put a line of its own
# into job.sbatch (after which sbatch ignores every later #SBATCH directive). The patterns keep `^...$`
# and use `[0-9]`, not `\d`, so that the CRD and the JSON Schema (RE2, ECMA-262) read them the same way.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")  # `{{`, `}}`: a literal brace
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
# Slurm's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (at most 8 digits of minutes, hours or days).
_SLURM_TIME = re.compile(r"^([0-9]{1,8}|[0-9]{1,8}:[0-9]{1,2}|[0-9]{1,8}:[0-9]{1,2}:[0-9]{1,2}|[0-9]{1,4}-[0-9]{1,2}"
                         r"|[0-9]{1,4}-[0-9]{1,2}:[0-9]{1,2}|[0-9]{1,4}-[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})$")
# Integers without a natural bound stop at the largest 32-bit integer: Slurm and many tools read
# them as such, and nothing here means more (DeepSpeed's bucket sizes, in elements, stay below 2^53,
# the largest integer a JSON reader that uses doubles keeps exact).
INT32_MAX = 2**31 - 1
JSON_INT_MAX = 2**53 - 1

# Native spellings users bring from FSDP, DeepSpeed and accelerate configs.
_SHARDING_ALIASES: dict[str, str] = {
    "none": "none", "noshard": "none", "zero0": "none", "stage0": "none", "0": "none", "ddp": "none",
    "optimizer": "optimizer", "zero1": "optimizer", "stage1": "optimizer", "1": "optimizer",
    "gradop": "grad_op", "shardgradop": "grad_op", "zero2": "grad_op", "stage2": "grad_op", "2": "grad_op",
    "full": "full", "fullshard": "full", "zero3": "full", "stage3": "full", "3": "full",
    "hybrid": "hybrid", "hybridshard": "hybrid", "hpz": "hybrid", "zero++": "hybrid", "zeroplusplus": "hybrid",
}


def _normalise_sharding(value: Any) -> Any:
    if value is False:  # YAML 1.1 reads `no` as false
        return "none"
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not 0 <= value <= 3:  # a ZeRO stage: -1 must not become "1" once the '-' is dropped below
            raise ValueError(f"ZeRO stage {value} does not exist: a stage number is 0, 1, 2 or 3")
        value = str(value)
    if isinstance(value, str):
        if re.fullmatch(r"\s*[-+]?[0-9]+\s*", value) and value.strip() not in ("0", "1", "2", "3"):
            raise ValueError(f"ZeRO stage {value.strip()[:20]!r} does not exist: a stage number is 0, 1, 2 or 3")
        key = re.sub(r"[\s_\-]", "", value.strip().lower())
        if key == "hybridshardzero2":
            raise ValueError(
                "HYBRID_SHARD_ZERO2 has no DeepSpeed twin and is not supported; use hybrid (HYBRID_SHARD = ZeRO++ hpZ)"
            )
        if key in _SHARDING_ALIASES:
            return _SHARDING_ALIASES[key]
        raise ValueError(
            f"unknown sharding {value[:40]!r}; use none | optimizer | grad_op | full | hybrid "
            "(or FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD, zero0-zero3, a stage number 0-3)"
        )
    return value


def _false_is(word: str):
    """YAML 1.1 turns `no`/`off` into False; read it back as the word the user meant."""

    def convert(value: Any) -> Any:
        return word if value is False else value

    return convert


def _check_bytes(value: Any) -> Any:
    parse_bytes(value)  # refuses a bare number (no unit), a non-string and anything past 10 PiB
    return value


def _check_count(value: Any) -> float:
    return parse_count(value)


def _shown(value: str, limit: int = 80) -> str:
    """A value quoted back in an error: repr (so a newline shows as \\n), cut to a readable length."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            f"{_shown(value)} is not a DNS-1123 label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


def _check_env_names(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{_shown(name)} is not a valid environment variable name")
    return env


# A variable whose name says it holds a credential. Its value under entrypoint.env would be copied into the
# stored spec, launch.sh, job.sbatch and the Kubernetes Job, so it must come through entrypoint.env_from.
# A name ending in _FILE, _PATH or _DIR names where a secret is, not the secret (GOOGLE_APPLICATION_CREDENTIALS
# is a path too, so CREDENTIALS is not in the list).
# PAT is a personal access token (GITHUB_PAT, GITLAB_PAT, HF_PAT), a whole word only: PATH, COMPAT and PATTERN
# are not credentials.
_SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|KEY|APIKEY|PASSWORD|PASSWD|PASSPHRASE|SECRET|PAT)$|PASSWORD|SECRET")
# A URL that carries a password (`postgres://user:pw@host/db`, `redis://:pw@host`), whatever the variable's name
# (DATABASE_URL, MLFLOW_TRACKING_URI, ...): scheme://, an optional user, `:`, a non-empty password, then `@`.
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#@\s:]*:[^/?#@\s]+@")
_REFERENCE_NAME = re.compile(r"_(?:FILE|PATH|DIR)$")
# Secret names are DNS-1123 subdomains (Kubernetes object names).
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def looks_like_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential (HF_TOKEN, WANDB_API_KEY, ...)."""
    upper = name.upper()
    return not _REFERENCE_NAME.search(upper) and bool(_SECRET_NAME.search(upper))


def holds_password(value: str) -> bool:
    """Whether a variable's value carries a credential: a URL with user:password@ in it."""
    return _URL_WITH_PASSWORD.search(value) is not None


def _refuse_secret_values(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if looks_like_secret(name):
            raise ValueError(
                f"{name} looks like a secret, and a value here is copied into the stored spec, launch.sh, job.sbatch "
                f"and the Kubernetes Job: pass it by reference with entrypoint.env_from (`- env: {name}` from the "
                "submitting shell or `- file: PATH` on local and Slurm; `- secret: NAME` on Kubernetes)")
        if holds_password(value):  # the message never repeats the value
            raise ValueError(
                f"{name}'s value is a URL with a password (user:password@), which would be copied into the stored "
                f"spec and every rendered file: use entrypoint.env_from (`- env: {name}`, `- file: PATH`, `- secret`)")
    return env


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a valid environment variable name")
    if value.startswith("SHARDCTL_"):
        raise ValueError(f"{_shown(value)}: SHARDCTL_* variables are set by shardctl itself")
    return value


def _check_secret_name(value: str) -> str:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a Kubernetes Secret name (a DNS-1123 subdomain: lower-case "
                         "letters, digits, '-' and '.', at most 253 characters)")
    return value


def _check_file_path(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 or c in _LINE_BREAKS for c in value):
        raise ValueError(f"{_shown(value)}: a file path here is one line without control characters")
    return value


def _scalar_to_str(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _check_placeholders(args: list[str]) -> list[str]:
    for arg in args:
        for name in _PLACEHOLDER.findall(arg):
            if name and name not in PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {{{name}}} in {_shown(arg)}; known: "
                    + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                )
    return args


def _check_slurm_time(value: str) -> str:
    if not _SLURM_TIME.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a Slurm time; use MM, HH:MM:SS or D-HH:MM:SS")
    return value


def _check_slurm_name(value: str) -> str:
    if not _SLURM_NAME.fullmatch(value):
        raise ValueError(f"{_shown(value)}: Slurm names here are letters, digits, '_', '-' and '.' (at most 64)")
    return value


_LINE_BREAKS = "\x85\u2028\u2029"  # what str.splitlines() also splits on, besides the control characters


def _check_directive(value: str) -> str:
    if not value.startswith("--") or any(ord(c) < 32 or ord(c) == 127 or c in _LINE_BREAKS for c in value):
        raise ValueError(f"{_shown(value)}: an extra directive is one sbatch option on one line, starting with --")
    return value


SlurmName = Annotated[str, AfterValidator(_check_slurm_name)]
ByteQuantity = Annotated[
    str,
    BeforeValidator(_check_bytes),
    WithJsonSchema({"type": "string", "pattern": BYTES_PATTERN, "examples": ["80GiB", "64G", "512Mi"]}),
]
ParamCount = Annotated[
    float,
    BeforeValidator(_check_count),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_COUNT - 1},
                              {"type": "string", "pattern": COUNT_PATTERN}],
                    "examples": [6.7e9, "7B"]}),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]  # .inf and .nan are floats to YAML, never to JSON
ShardingField = Annotated[
    Sharding,
    BeforeValidator(_normalise_sharding),
    WithJsonSchema({"anyOf": [{"type": "string", "enum": list(get_args(Sharding))},
                              {"type": "string"}, {"type": "integer", "minimum": 0, "maximum": 3}],
                    "description": "none | optimizer | grad_op | full | hybrid; native spellings "
                                   "(FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD, zero3, a ZeRO stage number) "
                                   "are accepted and normalised."}),
]
OffloadField = Annotated[OffloadDevice, BeforeValidator(_false_is("none"))]
MixedField = Annotated[Mixed, BeforeValidator(_false_is("no"))]
EnvMap = Annotated[dict[str, Annotated[str, BeforeValidator(_scalar_to_str)]], AfterValidator(_check_env_names)]
DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]


def _refuse_controls(value: Any, where: str = "") -> None:
    """ValueError naming where (a key, an index) when a string in `value` holds a control character or a
    direction override (orchestrator/spec/text.py): it would reach launch.sh, job.sbatch, a manifest, a log
    line or a terminal. The message names the character, never repeats the string."""
    if isinstance(value, str):
        if (char := first_unsafe(value)) is not None:
            raise ValueError(f"{where + ' ' if where else ''}holds the control character {char}: a spec string "
                             "holds no control characters (but tab) and no direction overrides")
    elif isinstance(value, dict):
        for key, sub in value.items():
            if isinstance(key, str) and (char := first_unsafe(key)) is not None:
                raise ValueError(f"the key {_shown(key)} holds the control character {char}: a spec string holds "
                                 "no control characters (but tab) and no direction overrides")
            _refuse_controls(sub, f"{where}.{key}" if where else f"{key}")
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            _refuse_controls(sub, f"{where}.{i}" if where else f"item {i}")


_NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


def _check_node_name(value: str) -> str:
    if not _NODE_NAME.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a node name (letters, digits, '.', '_' and '-', at most 253)")
    return value


NodeName = Annotated[str, Field(max_length=253), AfterValidator(_check_node_name)]


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored. No string holds a control character."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_controls(cls, value: Any) -> Any:
        if not isinstance(value, BaseModel):  # a nested model has checked its own fields
            _refuse_controls(value)
        return value


class Metadata(_Strict):
    name: DnsLabel = Field(description="Job name, a DNS-1123 label (it names pods, Slurm jobs and run directories).")
    namespace: DnsLabel | None = Field(default=None, description="Kubernetes namespace (target kubernetes).")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels, copied to every child object.")


class EnvSource(_Strict):
    """One source of secret environment variables, by reference: exactly one of secret, env and file."""

    secret: Annotated[str, AfterValidator(_check_secret_name)] | None = Field(
        default=None,
        description="Kubernetes: a Secret in the job's namespace; every key becomes a variable (envFrom secretRef), "
                    "or only `keys` (secretKeyRef). Refused on local and Slurm.")
    keys: list[EnvName] | None = Field(
        default=None, min_length=1,
        description="With `secret`: only these keys, each as the variable of the same name.")
    env: EnvName | None = Field(
        default=None,
        description="Local and Slurm: this variable of the shell that runs `shardctl submit`, passed to the run "
                    "through process environments only (on Slurm, sbatch --export). A later attempt started by a "
                    "shardctl process without it fails with that reason.")
    file: Annotated[str, AfterValidator(_check_file_path)] | None = Field(
        default=None, min_length=1,
        description="Local and Slurm: a file of KEY=VALUE lines (# comments, an optional `export `, one pair of "
                    "surrounding quotes removed; nothing expanded), read when each attempt starts (on Slurm, on the "
                    "node). It must be readable by its owner only (mode 0600 or 0400); `~` is your home, a relative "
                    "path is relative to the directory of `shardctl submit`.")

    @model_validator(mode="after")
    def _one_kind(self) -> EnvSource:
        given = [k for k in ("secret", "env", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an env_from item is exactly one of `secret: NAME`, `env: NAME` or `file: PATH`"
                             + (f", not {' and '.join(given)}" if given else ""))
        if self.keys is not None and self.secret is None:
            raise ValueError("`keys` selects keys of a `secret`; it does not apply to env or file")
        if self.keys is not None and len(set(self.keys)) != len(self.keys):
            raise ValueError("`keys` names a key twice")
        return self

    @property
    def kind(self) -> Literal["secret", "env", "file"]:
        return "secret" if self.secret is not None else "env" if self.env is not None else "file"

    def names(self) -> list[str]:
        """The variables this source is known to set before launch (a whole Secret's or a file's are not)."""
        return list(self.keys or []) if self.secret is not None else [self.env] if self.env is not None else []


class Entrypoint(_Strict):
    script: str = Field(min_length=1, description="The training script that `accelerate launch` runs.")
    args: Annotated[list[Annotated[str, BeforeValidator(_scalar_to_str)]], AfterValidator(_check_placeholders)] = Field(
        default_factory=list,
        description="Script arguments. Placeholders {micro_batch}, {grad_accum}, {checkpoint_dir}, {attempt}, "
                    "{seq_len}, {world_size} are filled per attempt (the fallback may change micro_batch/grad_accum). "
                    "As in Python's str.format, {{ and }} stand for one literal brace each (--fmt={{epoch}} passes "
                    "--fmt={epoch}); a lone brace is kept as it is.",
    )
    env: Annotated[EnvMap, AfterValidator(_refuse_secret_values)] = Field(
        default_factory=dict,
        description="Extra environment for the script, as plain values: they are copied into every record and "
                    "rendered file, so a name that looks like a secret (*_TOKEN, *_KEY, *_PAT, *PASSWORD*, *SECRET*) "
                    "or a URL with a password (user:password@) is refused: use env_from.")
    env_from: list[EnvSource] = Field(
        default_factory=list,
        description="Secret environment, by reference: the values never enter the spec, a record, a log shardctl "
                    "writes, launch.sh, job.sbatch or a manifest. Each item is one of `secret` (target kubernetes), "
                    "`env` or `file` (targets local and slurm). `submit` checks that each variable is set and each "
                    "file private before anything is recorded.")
    function: bool = Field(
        default=False,
        description="Set by `shardctl.submit(fn, *args, job=...)`, not by hand: the entrypoint is a pickled Python "
                    "call run by `-m orchestrator.entry.run_pickled` on every rank. On target kubernetes the call "
                    "is read from the Secret NAME-function-UID (created by the submitting user, owned by this "
                    "TrainingJob) and rank 0's outcome is printed at the end of its log.")

    @model_validator(mode="after")
    def _distinct_sources(self) -> Entrypoint:
        seen: set[str] = set()
        for source in self.env_from:
            for name in source.names():
                if name in self.env:
                    raise ValueError(f"env_from: {name} is also set in entrypoint.env: give it once")
                if name in seen:
                    raise ValueError(f"env_from: {name} is given twice")
                seen.add(name)
        return self


class Model(_Strict):
    name_or_path: str = Field(min_length=1, description=(
        "Hub id or local path. shardctl never downloads the weights; `plan` reads only the model's "
        "config.json (from the local Hugging Face cache, else the Hub when reachable)."))
    parameters: ParamCount | None = Field(default=None,
                                          description="Parameter count, e.g. 6.7e9 or \"7B\" (used by plan).")
    layer_class: str | None = Field(
        default=None,
        description="FSDP wrap class (fsdp_transformer_layer_cls_to_wrap). Leave unset for recent transformers models, "
                    "which declare _no_split_modules.",
    )


class Precision(_Strict):
    mixed: MixedField = Field(default="bf16", description="Mixed precision for compute: no | fp16 | bf16.")
    params: LoadDtype = Field(
        default="fp32",
        description="The dtype the model is loaded in. FSDP keeps it for flat params and optimizer; DeepSpeed always "
                    "keeps fp32 master weights (accelerate's guide 'Moving between FSDP and DeepSpeed').",
    )


class Offload(_Strict):
    optimizer: OffloadField = Field(default="none", description="Optimizer state offload: none | cpu | nvme.")
    params: OffloadField = Field(default="none", description="Parameter offload: none | cpu | nvme (needs ZeRO-3).")
    nvme_path: str | None = Field(default=None,
                                  description="Directory on a local NVMe for nvme offload (DeepSpeed only).")


class Batch(_Strict):
    micro: int = Field(default=1, ge=1, le=INT32_MAX, description="Per-GPU micro-batch.")
    global_: int | None = Field(
        default=None, ge=1, le=INT32_MAX, alias="global",
        description="Global batch; gradient accumulation = global / (micro x world size).",
    )
    seq_len: int | None = Field(default=None, ge=1, le=INT32_MAX,
                                description="Sequence length (used by plan; passed to the script).")
    target_len: int | None = Field(
        default=None, ge=1, le=INT32_MAX,
        description="Encoder-decoder models: the decoder (target) length; seq_len is then the source length "
                    "(used by plan).",
    )


class Resources(_Strict):
    nodes: int = Field(default=1, ge=1, le=4096,
                       description="Machines; one launcher each (on Kubernetes, one pod of the Indexed Job per node).")
    gpus_per_node: int = Field(default=1, ge=1, le=64,
                               description="GPUs per node: one training process each (nvidia.com/gpu on Kubernetes).")
    gpu_memory: ByteQuantity | None = Field(default=None, description="Memory of one GPU, e.g. 80GiB (used by plan).")
    cpus_per_node: int | None = Field(default=None, ge=1, le=INT32_MAX,
                                      description="CPUs per node (sbatch --cpus-per-task; a Kubernetes CPU request). "
                                                  "Unset on Slurm: the partition's CPUs per GPU x gpus_per_node, "
                                                  "asked of sinfo at submit.")
    memory_per_node: ByteQuantity | None = Field(
        default=None, description="Host memory per node; enforced as a real limit by every target.",
    )
    avoid_nodes: list[NodeName] = Field(
        default_factory=list, max_length=256,
        description="Nodes the attempts must not run on (Slurm: sbatch --exclude; Kubernetes: a NotIn node "
                    "affinity on kubernetes.io/hostname). After a node fault shardctl adds the node for the "
                    "next attempt, and every attempt also avoids the site's suspect nodes (`shardctl nodes`).")


class Checkpoint(_Strict):
    dir: str | None = Field(default=None,
                            description="Checkpoint directory shared by all attempts (default per target).")
    every_steps: int | None = Field(default=None, ge=1, le=INT32_MAX,
                                    description="Save every N optimizer steps (passed to the script).")


class Fallback(_Strict):
    enabled: bool = Field(default=True, description="Fall back to a more frugal config on out-of-memory.")
    max_attempts: int = Field(default=5, ge=1, le=50,
                              description="Attempts with a new config, the first included (fallback rungs); "
                                          "same-config restarts are counted by resilience.max_restarts.")
    ladder: Literal["auto"] | list[Rung] = Field(
        default="auto",
        description="`auto` (the default ladder, cheapest slowdown first) or an explicit list of rungs.",
    )
    plan: Annotated[Literal["auto", "off"], BeforeValidator(_false_is("off"))] = Field(
        default="auto",
        description="`auto`: on GPUs with resources.gpu_memory known, the first attempt starts from the cheapest "
                    "config the memory planner predicts to fit, and the fallback skips rungs predicted not to fit. "
                    "`off`: start from the spec as written.",
    )


_DURATION = re.compile(r"(?:([0-9]{1,3})h)?(?:([0-9]{1,4})m)?(?:([0-9]{1,6})s)?")
MIN_HANG_S, MAX_HANG_S = 10, 7 * 24 * 3600


def _duration_seconds(value: Any) -> Any:
    """90, "90s", "10m", "1h30m" -> seconds; anything else is left for the int check to refuse."""
    if isinstance(value, str) and value and (m := _DURATION.fullmatch(value.strip())) and any(m.groups()):
        hours, minutes, seconds = (int(g or 0) for g in m.groups())
        return hours * 3600 + minutes * 60 + seconds
    if isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a duration; write seconds (600) or 30s, 10m, 1h30m")
    return value


Duration = Annotated[
    int, BeforeValidator(_duration_seconds), Field(ge=MIN_HANG_S, le=MAX_HANG_S),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": MIN_HANG_S, "maximum": MAX_HANG_S},
                              {"type": "string", "pattern": r"^([0-9]{1,3}h)?([0-9]{1,4}m)?([0-9]{1,6}s)?$"}],
                    "description": "seconds, or a duration such as 30s, 10m, 1h30m"}),
]

RuleAction = Literal["retry", "fallback", "exclude_node", "fail"]  # exclude_node: retry, avoiding its node
RuleKind = Literal["cuda_oom", "host_oom", "preempted", "timeout", "user_error", "unknown", "disk_full", "hang",
                   "node_fault", "network"]


class RuleWhen(_Strict):
    """What a rule matches in how an attempt failed: exactly one of kind, exit_code and log."""

    kind: RuleKind | None = Field(default=None, description="A failure kind, as the classifier found it.")
    exit_code: int | None = Field(default=None, ge=1, le=255, description="The run's exit code (the launcher's).")
    log: Annotated[str, Field(max_length=256), AfterValidator(check_pattern)] | None = Field(
        default=None, description="A regular expression (RE2: linear time, no backreferences or lookarounds; at "
                                  "most 256 characters) searched in the last 256 KiB of the attempt's log.")

    @model_validator(mode="after")
    def _exactly_one(self) -> RuleWhen:
        given = [name for name in ("kind", "exit_code", "log") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a rule matches on exactly one of kind, exit_code and log (given: "
                             f"{', '.join(given) or 'none'})")
        return self

    def text(self) -> str:
        return next(f"{name} {getattr(self, name)!r}" if name == "log" else f"{name} {getattr(self, name)}"
                    for name in ("kind", "exit_code", "log") if getattr(self, name) is not None)


class Rule(_Strict):
    when: RuleWhen = Field(description="What the rule matches: a failure kind, an exit code or a log pattern.")
    then: RuleAction = Field(description="retry: the same config from the last checkpoint (counted by max_restarts); "
                                         "fallback: the next rung of the ladder; exclude_node: retry elsewhere; "
                                         "fail: stop, no retry.")


class Resilience(_Strict):
    hang_after: Duration | None = Field(
        default=None, description="Once steps are seen: no progress and no output for this long and the attempt is "
                                  "hung: its ranks' stacks are saved (local), it is stopped and restarted from the "
                                  "last checkpoint. Unset: 10 times the slowest step seen, at least 5 minutes (20 "
                                  "minutes until two steps are timed).")
    first_step_within: Duration | None = Field(
        default=None, description="Before the first step is seen (imports, loading the model, compilation): the "
                                  "silence after which the attempt is hung. Unset: 20 minutes.")
    max_restarts: int = Field(
        default=3, ge=0, le=50,
        description="Restarts with the same config after a transient fault (hang, node fault, network, timeout, "
                    "preemption, a rule's retry); counted apart from fallback.max_attempts.")
    rules: list[Rule] = Field(
        default_factory=list, max_length=32,
        description="Checked in order before the built-in policy; the first whose `when` matches decides.")


# Backend pass-through (fsdp.config, deepspeed.config): keys with no neutral twin, carried verbatim into the
# rendered config. Bounded like the input itself: plain JSON values, shallow, a few hundred entries at most.
PASSTHROUGH_MAX_DEPTH = 6
PASSTHROUGH_MAX_ENTRIES = 500


def _check_passthrough(value: dict[str, Any]) -> dict[str, Any]:
    count = 0

    def walk(node: Any, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > PASSTHROUGH_MAX_ENTRIES:
            raise ValueError(f"more than {PASSTHROUGH_MAX_ENTRIES} entries: a pass-through carries a few keys, "
                             "not a whole config")
        if depth > PASSTHROUGH_MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {PASSTHROUGH_MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, sub in node.items():
                if not isinstance(key, str) or not key or len(key) > 100:
                    raise ValueError(f"{path or 'config'}: key {_shown(str(key))} must be a string of 1-100 characters")
                walk(sub, f"{path}.{key}" if path else key, depth + 1)
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]", depth + 1)
        elif isinstance(node, float) and node != node or node in (float("inf"), float("-inf")):
            raise ValueError(f"{path}: {node} is not a JSON number")
        elif isinstance(node, str) and len(node) > 4096:
            raise ValueError(f"{path}: string longer than 4096 characters")
        elif node is not None and not isinstance(node, (str, int, float, bool)):
            raise ValueError(f"{path}: {type(node).__name__} is not a JSON value")

    walk(value, "", 0)
    return value


PassThrough = Annotated[
    dict[str, Any],
    AfterValidator(_check_passthrough),
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class FsdpOptions(_Strict):
    """FSDP knobs. Unset means shardctl applies accelerate's FSDP guide's recommendation."""

    version: Literal[1, 2] = Field(default=1, description="FSDP version (fsdp_version); FSDP2 supports full and "
                                                          "grad_op sharding only.")
    backward_prefetch: Literal["BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"] = Field(
        default="BACKWARD_PRE", description="fsdp_backward_prefetch (FSDP1): when the next parameters are gathered.")
    forward_prefetch: bool = Field(default=False, description="fsdp_forward_prefetch (FSDP1).")
    use_orig_params: bool | None = Field(
        default=None, description="fsdp_use_orig_params (FSDP1). Unset: true; forced true with torch_compile.")
    cpu_ram_efficient_loading: bool | None = Field(
        default=None, description="fsdp_cpu_ram_efficient_loading: only rank 0 loads the weights. Unset: true.")
    sync_module_states: bool | None = Field(
        default=None, description="fsdp_sync_module_states (FSDP1): broadcast rank 0's weights. Unset: true; forced "
                                  "true with cpu_ram_efficient_loading.")
    state_dict_type: Literal["SHARDED_STATE_DICT", "FULL_STATE_DICT"] = Field(
        default="SHARDED_STATE_DICT", description="fsdp_state_dict_type: how checkpoints are saved.")
    config: PassThrough = Field(
        default_factory=dict,
        description="accelerate fsdp_config keys with no field here (e.g. fsdp_min_num_params), carried verbatim "
                    "into the rendered fsdp_config; a key that contradicts the spec is an error, and the whole "
                    "mapping is dropped, with a warning naming each key, when the job moves to DeepSpeed.")


class DeepSpeedOptions(_Strict):
    """DeepSpeed knobs. Unset means shardctl applies accelerate's DeepSpeed guide's recommendation."""

    zero3_init: bool | None = Field(default=None, description="zero3_init_flag (ZeRO-3 only).")
    save_16bit_model: bool | None = Field(default=None, description="zero3_save_16bit_model (ZeRO-3 only).")
    gradient_clipping: FiniteFloat = Field(default=1.0, ge=0, description="gradient_clipping: the gradient norm cap.")
    overlap_comm: bool = Field(default=True, description="zero_optimization.overlap_comm (ZeRO stages 1-3).")
    reduce_bucket_size: int | None = Field(
        default=None, ge=1, le=JSON_INT_MAX,
        description="zero_optimization.reduce_bucket_size, in elements (ZeRO stages 1-3).")
    allgather_bucket_size: int | None = Field(
        default=None, ge=1, le=JSON_INT_MAX,
        description="zero_optimization.allgather_bucket_size, in elements (ZeRO stages 1-3).")
    stage3_prefetch_bucket_size: int | None = Field(
        default=None, ge=1, le=JSON_INT_MAX,
        description="zero_optimization.stage3_prefetch_bucket_size, in elements (ZeRO-3).")
    stage3_max_live_parameters: int | None = Field(
        default=None, ge=1, le=JSON_INT_MAX,
        description="zero_optimization.stage3_max_live_parameters (ZeRO-3).")
    config: PassThrough = Field(
        default_factory=dict,
        description="DeepSpeed config keys with no field here (e.g. optimizer, scheduler, "
                    "zero_optimization.sub_group_size), deep-merged verbatim into the rendered DeepSpeed JSON; a key "
                    "that contradicts the spec is an error, and the whole mapping is dropped, with a warning naming "
                    "each key, when the job moves to FSDP.")


class SlurmOptions(_Strict):
    partition: SlurmName | None = Field(default=None, description="Partition (sbatch --partition).")
    account: SlurmName | None = Field(default=None, description="Account to charge (sbatch --account).")
    qos: SlurmName | None = Field(default=None, description="Quality of service (sbatch --qos).")
    time: Annotated[str, AfterValidator(_check_slurm_time)] | None = Field(default=None, description="e.g. 2-00:00:00")
    signal_seconds: int = Field(
        default=120, ge=10, le=3600,
        description="With a time limit: this many seconds before it, the batch script gets SIGUSR1 and asks the "
                    "training script for a checkpoint (SHARDCTL_CHECKPOINT_REQUEST).",
    )
    requeue: bool | None = Field(
        default=None,
        description="sbatch --requeue (preemption or node failure restarts the attempt, which resumes from its "
                    "checkpoint). Unset: yes when checkpoint.every_steps is set.",
    )
    supervisor_partition: SlurmName | None = Field(
        default=None,
        description="Partition of the small CPU job that judges each attempt when it ends (default: the site's "
                    "default partition).",
    )
    extra: list[Annotated[str, AfterValidator(_check_directive)]] = Field(
        default_factory=list, description="Extra sbatch options passed through verbatim, e.g. --constraint=a100.",
    )


class Toleration(_Strict):
    """A pod toleration (core/v1 Toleration), in snake_case."""

    key: str | None = Field(default=None, description="The taint key; unset with operator Exists: every taint.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Equal (key and value) or Exists.")
    value: str | None = Field(default=None, description="The taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to tolerate; unset: every effect.")
    toleration_seconds: int | None = Field(
        default=None, ge=0, le=JSON_INT_MAX,
        description="NoExecute: how long the pod stays bound after the taint appears.")


class Volume(_Strict):
    """A volume mounted into the training container: a PVC, a Secret, a ConfigMap, or else an emptyDir."""

    name: DnsLabel = Field(description="Volume name, a DNS-1123 label.")
    mount_path: str = Field(min_length=1, description="Where the container sees it.")
    claim_name: str | None = Field(default=None, min_length=1, description="PersistentVolumeClaim to mount.")
    secret_name: str | None = Field(default=None, min_length=1, description="Secret to mount (by reference).")
    config_map: str | None = Field(default=None, min_length=1, description="ConfigMap to mount.")
    read_only: bool = Field(default=False, description="Mount read-only (a read-only PVC cannot hold checkpoints).")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        given = [name for name in ("claim_name", "secret_name", "config_map") if getattr(self, name) is not None]
        if len(given) > 1:  # a volume has one source: the others would be dropped without a word
            raise ValueError(f"a volume has one source, but {' and '.join(given)} are "
                             f"{'both' if len(given) == 2 else 'all'} set: use one volume per source")
        return self


class KubernetesOptions(_Strict):
    image: str | None = Field(default=None, description="Training image (required for target kubernetes, and so "
                                                        "for every TrainingJob resource).")
    namespace: DnsLabel | None = Field(default=None, description="Namespace of the attempt's objects (shardctl "
                                                                 "submit); a resource's own namespace must match it.")
    queue: str | None = Field(default=None, description="Kueue LocalQueue (kueue.x-k8s.io/queue-name).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="The pods' nodeSelector.")
    tolerations: list[Toleration] = Field(default_factory=list, description="The pods' tolerations.")
    priority_class: str | None = Field(default=None, description="The pods' priorityClassName.")
    service_account: str | None = Field(default=None, description="The pods' serviceAccountName (the namespace's "
                                                                  "`default` unless the controller's policy allows "
                                                                  "more).")
    automount_service_account_token: bool = Field(
        default=False, description="Mount the service account's API token into the pods (off: training code "
                                   "rarely needs the Kubernetes API, and a token is a credential).")
    run_as_user: int | None = Field(
        default=None, ge=1, le=INT32_MAX,
        description="The pods' user id, for images whose default user is root (pods always run as non-root).")
    volumes: list[Volume] = Field(
        default_factory=list, description="Volumes for the training container; put checkpoint.dir on a writable PVC "
                                          "so that a new attempt can resume.")
    termination_grace_seconds: int = Field(
        default=120, ge=10, le=3600,
        description="The pods' terminationGracePeriodSeconds. When a pod is to stop (preemption, a node drained, the "
                    "job cancelled), its container is told at once and asks the training script for a checkpoint "
                    "(SHARDCTL_CHECKPOINT_REQUEST); the launcher gets SIGTERM 10 s before this ends, SIGKILL at it.")



# spec.notify: webhooks told after a state change is recorded (orchestrator/notify/, docs/design.md "Notifications").
class NotifyEvent(StrEnum):
    """What a webhook can ask to hear about."""

    ATTEMPT_ENDED = "attempt_ended"  # an attempt's end is recorded, whatever it was
    FALLBACK_TAKEN = "fallback_taken"  # the next attempt runs a different config than the last (a rung)
    JOB_FINISHED = "job_finished"  # the job reached a terminal state
    HANG_DETECTED = "hang_detected"  # an attempt ended with failure kind `hang`
    STALLED = "stalled"  # an open attempt waits on something a person must fix (once per attempt)


MAX_WEBHOOKS = 8


def _notify_event(value: Any) -> Any:
    if isinstance(value, str) and not isinstance(value, NotifyEvent):
        try:
            return NotifyEvent(value)
        except ValueError:
            raise ValueError(f"unknown event {_shown(value, 40)}; use "
                             + " | ".join(e.value for e in NotifyEvent)) from None
    return value


def _refuse_literal_secret(what: str):
    """A literal string where a reference belongs is refused, without the value in the message."""

    def check(value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f"{what} is a secret and is never written in the spec (it would be copied into the "
                             "stored spec and every record): give it by reference, `env: NAME` (a variable of the "
                             "submitting shell) or `file: PATH` with `key: NAME` (a private KEY=VALUE file)")
        return value

    return check


class SecretRef(_Strict):
    """One secret value by reference, as entrypoint.env_from names its sources: exactly one of env, file and
    secret; `key` says which value of a file or a Secret."""

    env: EnvName | None = Field(
        default=None,
        description="Local and Slurm: this variable of the shell that runs `shardctl submit` (the supervisor "
                    "inherits it; a Slurm judge gets it by name in --export, whatever the site's SBATCH_EXPORT).")
    file: Annotated[str, AfterValidator(_check_file_path)] | None = Field(
        default=None, min_length=1,
        description="Local and Slurm: a private file (mode 0600 or 0400) of KEY=VALUE lines, read when a "
                    "notification is sent; `key` names the line. `~` is your home, a relative path is relative to "
                    "the directory of `shardctl submit`.")
    secret: Annotated[str, AfterValidator(_check_secret_name)] | None = Field(
        default=None, description="Kubernetes: a Secret in the job's namespace; `key` names the value.")
    key: EnvName | None = Field(default=None, description="With `file` or `secret`: which value.")

    @model_validator(mode="after")
    def _one_kind(self) -> SecretRef:
        given = [k for k in ("secret", "env", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a secret reference is exactly one of `env: NAME`, `file: PATH` (with `key`) or "
                             "`secret: NAME` (with `key`)" + (f", not {' and '.join(given)}" if given else ""))
        if self.env is not None and self.key is not None:
            raise ValueError("`key` selects a value of a `file` or a `secret`; `env: NAME` is one value already")
        if self.env is None and self.key is None:
            raise ValueError(f"`{given[0]}` holds several values: say which with `key: NAME`")
        return self

    @property
    def kind(self) -> Literal["secret", "env", "file"]:
        return "secret" if self.secret is not None else "env" if self.env is not None else "file"


class Webhook(_Strict):
    """One receiver of notifications: where (a secret), in which body format, about which events."""

    url: Annotated[SecretRef, BeforeValidator(_refuse_literal_secret("a webhook URL"))] = Field(
        description="The webhook's http(s) URL, by reference (it is a credential: whoever has it can post): "
                    "`env: NAME`, or `file: PATH` with `key: NAME` (local, Slurm); `secret: NAME` with `key: KEY` "
                    "(Kubernetes). A literal URL is refused.")
    format: Literal["slack", "json"] = Field(
        default="json",
        description="slack: a Slack-compatible {\"text\": ...} body, one line. json: a JSON object (event, job, "
                    "attempt, state, failure, time, idempotency key) signed with HMAC-SHA256 (signing_secret) in "
                    "X-Shardctl-Signature over \"<X-Shardctl-Timestamp>.<body>\".")
    signing_secret: Annotated[SecretRef | None, BeforeValidator(_refuse_literal_secret("a signing secret"))] = Field(
        default=None,
        description="format json: the shared HMAC-SHA256 key, by reference as `url` is (required there). Not with "
                    "format slack: Slack's incoming webhooks take no signature, the URL is the secret.")
    events: Annotated[list[Annotated[NotifyEvent, BeforeValidator(_notify_event)]], Field(min_length=1)] = Field(
        description="Which events this webhook hears: attempt_ended, fallback_taken, job_finished, hang_detected, "
                    "stalled (an attempt waits on something a person must fix: on Slurm a pending reason such as "
                    "ReqNodeNotAvail, PartitionDown or a held job; on Kubernetes a pod that cannot be scheduled).")

    @model_validator(mode="after")
    def _signed_when_json(self) -> Webhook:
        if self.format == "json" and self.signing_secret is None:
            raise ValueError("format json is signed: give `signing_secret` (by reference, as `url`)")
        if self.format == "slack" and self.signing_secret is not None:
            raise ValueError("format slack sends no signature (Slack's incoming webhooks take none): remove "
                             "`signing_secret`, or use format json")
        if len(set(self.events)) != len(self.events):
            raise ValueError("`events` names an event twice")
        return self


class TrainingJobSpec(_Strict):
    target: Target = Field(default="local", description="local | slurm | kubernetes: where `shardctl submit` runs "
                                                        "it. The controller runs every TrainingJob on Kubernetes.")
    entrypoint: Entrypoint = Field(description="The training script, its arguments and environment.")
    workdir: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="Local and Slurm: the directory holding the code, relative to the spec file's directory or "
                    "absolute. At submit its files (as git lists them: .gitignore respected; at most 256 MiB and "
                    "20,000 files) are copied, read-only, into the job store, and every attempt starts in that "
                    "copy: the script and relative paths resolve there, and editing the code never changes a "
                    "submitted job. Unset: attempts start where `shardctl submit` ran, with the code as it is then.")
    model: Model = Field(description="The model: where it is, its size (for plan), its FSDP wrap class.")
    backend: Backend = Field(default="fsdp", description="fsdp | deepspeed: the same request compiles to either.")
    sharding: ShardingField = Field(
        default="full", description="none | optimizer | grad_op | full | hybrid; native spellings (FULL_SHARD, "
                                    "SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD, zero3, a ZeRO stage number) are accepted "
                                    "and normalised.")
    precision: Precision = Field(default_factory=Precision,
                                 description="Mixed precision for compute and the dtype the model is loaded in.")
    offload: Offload = Field(default_factory=Offload, description="Optimizer and parameter offload to CPU or NVMe.")
    activation_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass to save memory (FSDP: accelerate "
                                   "does it; DeepSpeed: the script does, told by SHARDCTL_ACTIVATION_CHECKPOINTING).")
    torch_compile: bool = Field(default=False,
                                description="The script uses torch.compile (FSDP then needs use_orig_params).")
    batch: Batch = Field(default_factory=Batch, description="Micro-batch per GPU, global batch, sequence lengths.")
    resources: Resources = Field(default_factory=Resources, description="Nodes, GPUs, CPUs and memory.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint,
                                   description="Where the script checkpoints; every attempt resumes from there.")
    resilience: Resilience = Field(default_factory=Resilience,
                                   description="Hangs, restarts after transient faults, and rules that decide "
                                               "what follows a failure.")
    fallback: Fallback = Field(default_factory=Fallback,
                               description="After an out-of-memory failure: the next, more frugal config.")
    fsdp: FsdpOptions = Field(default_factory=FsdpOptions)
    deepspeed: DeepSpeedOptions = Field(default_factory=DeepSpeedOptions)
    slurm: SlurmOptions = Field(default_factory=SlurmOptions, description="Options for target slurm (sbatch).")
    kubernetes: KubernetesOptions = Field(default_factory=KubernetesOptions,
                                          description="Options for target kubernetes: image, queue, pod placement.")
    notify: list[Webhook] = Field(
        default_factory=list, max_length=MAX_WEBHOOKS,
        description="Webhooks told after a state change is recorded: each with its URL by reference, its body "
                    "format and the events it wants. Sent in the background with retries and an idempotency key; "
                    "a receiver that is down never holds up or fails the job. Local and Slurm: the supervisor and "
                    "the judge send them. Kubernetes: the controller does, where its chart sets "
                    "notifications.enabled, with the values from Secrets of the job's namespace.")

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.resources.gpus_per_node


class TrainingJob(_Strict):
    apiVersion: Literal["shardctl.dev/v1alpha1"] = Field(description="Always shardctl.dev/v1alpha1.")
    kind: Literal["TrainingJob"] = Field(description="Always TrainingJob.")
    metadata: Metadata = Field(description="Name, namespace and labels.")
    spec: TrainingJobSpec = Field(description="The training request.")

    def with_spec(self, **changes: Any) -> TrainingJob:
        """A copy with spec fields replaced (nested models by value); used by the fallback."""
        return self.model_copy(update={"spec": self.spec.model_copy(update=changes)})
