"""What a TrainingJob's author may ask of its pods, as the platform team decided (pure).

Whoever may create a TrainingJob does not get the controller's identity: the controller creates the pods,
so every pod-level choice in `spec.kubernetes` that could reach further than the author's own rights is
checked here against the policy the platform team put in the chart's values (`policy:`, handed to the
controller as the file `--policy`). A TrainingJob that asks for more is refused before any child exists.

Each list names what may be asked beyond the defaults; empty means nothing beyond them, `"*"` means anything:
- `serviceAccounts`: the default is the namespace's `default` account (what any pod gets), without its
  token. Mounting an account's token (`automount_service_account_token: true`) needs that account listed,
  `default` included: a token is a credential, the account alone is not.
- `imageRegistries`: registries (`registry.example.com`) or repository prefixes
  (`registry.example.com/team-a`), matched on whole path components (Docker Hub's short names count as
  `docker.io/library/NAME`). There is no default image, so an empty list admits no image at all.
- `priorityClasses`: the default is none (the cluster's default priority).
- `tolerations`: the default is none; a requested toleration must tolerate no more than one listed.
- `secrets`: Secrets of the job's namespace that may be mounted as volumes or referenced as environment;
  the default is none. A Python function's Secret (`spec.entrypoint.function`) is outside the list: the
  render mounts only `NAME-function-UID`, named after this TrainingJob's uid, which the submitting user
  created after the TrainingJob existed and owned by it; no spec field can name another. Naming any
  TrainingJob's function Secret as a volume or environment is refused, even under `"*"`: its arguments
  are one user's, for that job only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.entry import is_function_secret
from orchestrator.errors import PolicyError
from orchestrator.spec.models import Toleration, TrainingJob

ANY = "*"
DEFAULT_SERVICE_ACCOUNT = "default"
CHART_HINT = "the platform team sets policy.{key} in the shardctl chart's values"

# The image reference grammar of distribution/reference (what the kubelet parses), without IPv6 hosts.
_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_COMPONENT}(?:\.{_COMPONENT})*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH}(?:/{_PATH})*)"
                        r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[a-fA-F0-9]{32,})?")
_MAX_IMAGE = 512


class AllowedToleration(BaseModel):
    """A core/v1 Toleration as the platform team writes it in the chart's values (camelCase)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = Field(default=None, ge=0)  # noqa: N815 -- Kubernetes' spelling


class Policy(BaseModel):
    """The chart's `policy` values. Built with no argument it is the safe default: nothing beyond the defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    service_accounts: list[str] = Field(default_factory=list, alias="serviceAccounts")
    image_registries: list[str] = Field(default_factory=list, alias="imageRegistries")
    priority_classes: list[str] = Field(default_factory=list, alias="priorityClasses")
    tolerations: list[AllowedToleration] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)

    @classmethod
    def open(cls) -> Policy:
        """Everything allowed: for tests and a controller whose users already may create pods."""
        return cls(serviceAccounts=[ANY], imageRegistries=[ANY], priorityClasses=[ANY],
                   tolerations=[AllowedToleration(operator="Exists")], secrets=[ANY])


@dataclass(frozen=True)
class Denial:
    """One field of the spec that asks for more than the policy allows."""

    reason: str  # CamelCase, for the condition: ServiceAccountNotAllowed, ImageNotAllowed, ...
    field: str  # where in the spec, e.g. spec.kubernetes.priority_class
    asked: str
    allowed: str  # what is allowed, in words
    key: str  # the chart value that would allow it

    @property
    def message(self) -> str:
        return (f"{self.field}: {self.asked} is not allowed (allowed: {self.allowed}; "
                f"{CHART_HINT.format(key=self.key)})")


def load_policy(path: str | Path) -> Policy:
    """The policy file the chart mounts (YAML or JSON, the chart's `policy` values as they are)."""
    import yaml

    from orchestrator.spec.loader import SpecError, load_yaml, read_input_file

    try:
        documents = load_yaml(read_input_file(path).decode("utf-8"))
    except SpecError as exc:  # it says which file and why, in one line
        raise PolicyError(f"the policy {' '.join(exc.lines())}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: not a YAML policy: {' '.join(str(exc).split())}") from None
    if len(documents) > 1:
        raise PolicyError(f"{path}: one YAML document expected, found {len(documents)}")
    data: Any = documents[0] if documents else None
    try:
        return Policy.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise PolicyError(f"{path}: {where}: {first['msg']}") from None


def image_repository(image: str) -> str | None:
    """The repository an image reference names, registry included and without tag or digest, as the kubelet
    resolves it (`ubuntu:22.04` is docker.io/library/ubuntu); None when it is no valid reference."""
    if len(image) > _MAX_IMAGE:
        return None
    m = _REFERENCE.fullmatch(image)
    if m is None:
        return None
    domain, path = m.group("domain"), m.group("path")
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"
                                   or domain != domain.lower()):
        domain, path = None, f"{domain}/{path}"  # a first component that is no host: a Docker Hub user
    if domain is None or domain.lower() in ("docker.io", "index.docker.io"):
        domain = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    return f"{domain.lower()}/{path}"


def _registry_allows(entry: str, repository: str) -> bool:
    entry = entry.strip().rstrip("/")
    host, slash, rest = entry.partition("/")
    entry = host.lower() + slash + rest
    return entry == ANY or repository == entry or repository.startswith(entry + "/")


def covers(allowed: AllowedToleration, asked: Toleration) -> bool:
    """True when `asked` tolerates no taint that `allowed` does not (no other key, effect, value or longer stay)."""
    if allowed.effect is not None and asked.effect != allowed.effect:
        return False  # an unset effect asked tolerates every effect
    if allowed.key is not None and asked.key != allowed.key:
        return False  # an unset key asked (operator Exists) tolerates every taint
    if allowed.operator == "Equal" and (asked.operator != "Equal" or (asked.value or "") != (allowed.value or "")):
        return False
    if allowed.tolerationSeconds is not None and (asked.toleration_seconds is None
                                                  or asked.toleration_seconds > allowed.tolerationSeconds):
        return False
    return True


def _words(values: list[str], default: str | None = None) -> str:
    if ANY in values:
        return "any"
    shown = ([default] if default else []) + [v for v in values if v != default]
    return ", ".join(shown) if shown else "none"


def _toleration_text(t: Toleration | AllowedToleration) -> str:
    seconds = t.toleration_seconds if isinstance(t, Toleration) else t.tolerationSeconds
    parts = [f"key={t.key}" if t.key is not None else "any key", t.operator]
    parts += [f"value={t.value}"] if t.value is not None else []
    parts += [f"effect={t.effect}" if t.effect else "every effect"]
    parts += [f"tolerationSeconds={seconds}"] if seconds is not None else []
    return "{" + " ".join(parts) + "}"


def secret_references(job: TrainingJob) -> list[tuple[str, str]]:
    """(field, Secret name) for every Secret the pods would read: mounted volumes and environment references."""
    refs = [(f"spec.kubernetes.volumes[{i}].secret_name", v.secret_name)
            for i, v in enumerate(job.spec.kubernetes.volumes) if v.secret_name]
    refs += [(f"spec.entrypoint.env_from[{i}].secret", source.secret)
             for i, source in enumerate(job.spec.entrypoint.env_from) if source.secret]
    return refs


def check(policy: Policy, job: TrainingJob) -> list[Denial]:
    """Every field of `job` that asks for more than `policy` allows (empty: the job may run)."""
    k8s = job.spec.kubernetes
    denials: list[Denial] = []
    account = k8s.service_account or DEFAULT_SERVICE_ACCOUNT
    if account != DEFAULT_SERVICE_ACCOUNT and ANY not in policy.service_accounts \
            and account not in policy.service_accounts:
        denials.append(Denial("ServiceAccountNotAllowed", "spec.kubernetes.service_account", repr(account),
                              _words(policy.service_accounts, DEFAULT_SERVICE_ACCOUNT), "serviceAccounts"))
    elif k8s.automount_service_account_token and ANY not in policy.service_accounts \
            and account not in policy.service_accounts:
        denials.append(Denial("ServiceAccountTokenNotAllowed", "spec.kubernetes.automount_service_account_token",
                              f"the token of service account {account!r}",
                              f"tokens of {_words(policy.service_accounts)}", "serviceAccounts"))
    if k8s.image:
        repository = image_repository(k8s.image)
        if repository is None:
            denials.append(Denial("ImageNotAllowed", "spec.kubernetes.image", repr(k8s.image),
                                  "valid image references only", "imageRegistries"))
        elif not any(_registry_allows(entry, repository) for entry in policy.image_registries):
            denials.append(Denial("ImageNotAllowed", "spec.kubernetes.image", f"{k8s.image!r} ({repository})",
                                  f"images from {_words(policy.image_registries)}", "imageRegistries"))
    if k8s.priority_class and ANY not in policy.priority_classes and k8s.priority_class not in policy.priority_classes:
        denials.append(Denial("PriorityClassNotAllowed", "spec.kubernetes.priority_class", repr(k8s.priority_class),
                              _words(policy.priority_classes, "the cluster's default priority"), "priorityClasses"))
    for i, t in enumerate(k8s.tolerations):
        if not any(covers(a, t) for a in policy.tolerations):
            allowed = ", ".join(_toleration_text(a) for a in policy.tolerations) or "none"
            denials.append(Denial("TolerationNotAllowed", f"spec.kubernetes.tolerations[{i}]", _toleration_text(t),
                                  allowed, "tolerations"))
    for field, name in secret_references(job):
        if is_function_secret(name):
            denials.append(Denial("SecretNotAllowed", field, f"Secret {name!r}",
                                  "no TrainingJob's function Secret but through spec.entrypoint.function", "secrets"))
        elif ANY not in policy.secrets and name not in policy.secrets:
            denials.append(Denial("SecretNotAllowed", field, f"Secret {name!r}", _words(policy.secrets), "secrets"))
    return denials
