"""The platform team's policy over what a TrainingJob may ask of its pods (orchestrator/controller/policy.py), pure:
what each list allows, what the defaults are, and the words of a refusal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from orchestrator.controller.policy import (
    AllowedToleration,
    Policy,
    PolicyError,
    check,
    covers,
    image_repository,
    load_policy,
)
from orchestrator.spec.models import Toleration, TrainingJob

CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "shardctl" / "values.yaml"


def job(**kubernetes: object) -> TrainingJob:
    return TrainingJob.model_validate({
        "apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {"target": "kubernetes", "entrypoint": {"script": "/app/train.py"},
                 "model": {"name_or_path": "/models/m", "parameters": "1B"},
                 "kubernetes": {"image": "registry.example.com/ml/train:1", **kubernetes}}})


REGISTRY = Policy(imageRegistries=["registry.example.com"])


@pytest.mark.parametrize("image,repository", [
    ("ubuntu", "docker.io/library/ubuntu"),
    ("ubuntu:22.04", "docker.io/library/ubuntu"),
    ("pytorch/pytorch:2.4.0-cuda12.4", "docker.io/pytorch/pytorch"),
    ("docker.io/pytorch/pytorch", "docker.io/pytorch/pytorch"),
    ("index.docker.io/library/ubuntu", "docker.io/library/ubuntu"),
    ("Registry.Example.com/ml/train:1", "registry.example.com/ml/train"),
    ("registry.example.com:5000/ml/train@sha256:" + "a" * 64, "registry.example.com:5000/ml/train"),
    ("localhost/train", "localhost/train"),
    ("nvcr.io/nvidia/pytorch:24.05-py3", "nvcr.io/nvidia/pytorch"),
    ("registry.example.com@evil.io/x", None),  # not a reference: the kubelet refuses it too
    ("registry.example.com/ML/train", None),  # repository paths are lower case
    ("registry.example.com/../x", None),
    ("", None),
])
def test_image_references_resolve_as_the_kubelet_resolves_them(image: str, repository: str | None) -> None:
    assert image_repository(image) == repository


@pytest.mark.parametrize("image,allowed", [
    ("registry.example.com/ml/train:1", True),
    ("registry.example.com/train", True),
    ("registry.example.com.evil.io/ml/train:1", False),  # a longer host is another host
    ("registry.example.comx/ml/train:1", False),
    ("evil.io/registry.example.com/train", False),
    ("ubuntu", False),
])
def test_an_allowed_registry_matches_whole_path_components(image: str, allowed: bool) -> None:
    assert (check(REGISTRY, job(image=image)) == []) is allowed


def test_a_repository_prefix_allows_only_what_is_under_it() -> None:
    policy = Policy(imageRegistries=["registry.example.com/ml", "docker.io/library"])
    assert check(policy, job(image="registry.example.com/ml/train:1")) == []
    assert check(policy, job(image="ubuntu:22.04")) == []
    assert check(policy, job(image="registry.example.com/mlx/train:1"))
    assert check(policy, job(image="registry.example.com/other:1"))
    assert check(policy, job(image="pytorch/pytorch"))


@pytest.mark.parametrize("kubernetes,field,reason", [
    ({"service_account": "admin"}, "spec.kubernetes.service_account", "ServiceAccountNotAllowed"),
    ({"automount_service_account_token": True}, "spec.kubernetes.automount_service_account_token",
     "ServiceAccountTokenNotAllowed"),
    ({"priority_class": "system-cluster-critical"}, "spec.kubernetes.priority_class", "PriorityClassNotAllowed"),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.kubernetes.tolerations[0]", "TolerationNotAllowed"),
    ({"volumes": [{"name": "creds", "mount_path": "/creds", "secret_name": "cloud-admin"}]},
     "spec.kubernetes.volumes[0].secret_name", "SecretNotAllowed"),
    ({"image": "docker.io/attacker/miner:1"}, "spec.kubernetes.image", "ImageNotAllowed"),
])
def test_the_default_policy_allows_nothing_beyond_the_defaults(kubernetes: dict, field: str,
                                                                        reason: str) -> None:
    denials = check(REGISTRY, job(**kubernetes))
    assert [(d.field, d.reason) for d in denials] == [(field, reason)]
    assert check(Policy.open(), job(**kubernetes)) == []  # and "*" opens each of them


def test_the_defaults_themselves_are_allowed() -> None:
    assert check(REGISTRY, job()) == []
    assert check(REGISTRY, job(service_account="default")) == []  # what any pod of the namespace gets
    assert check(Policy(), job())[0].reason == "ImageNotAllowed"  # no default image: nothing runs until set


def test_a_token_needs_its_account_listed_and_the_account_alone_does_not_bring_it() -> None:
    policy = Policy(imageRegistries=["registry.example.com"], serviceAccounts=["trainer"])
    assert check(policy, job(service_account="trainer")) == []
    assert check(policy, job(service_account="trainer", automount_service_account_token=True)) == []
    assert [d.reason for d in check(policy, job(automount_service_account_token=True))] == [
        "ServiceAccountTokenNotAllowed"]  # default is usable, its token is not: it is not listed
    listed = Policy(imageRegistries=["registry.example.com"], serviceAccounts=["default"])
    assert check(listed, job(automount_service_account_token=True)) == []


def test_a_refusal_names_the_field_the_value_asked_and_what_is_allowed() -> None:
    policy = Policy(imageRegistries=["registry.example.com"], priorityClasses=["research", "batch-low"])
    [denial] = check(policy, job(priority_class="system-cluster-critical"))
    assert denial.message == ("spec.kubernetes.priority_class: 'system-cluster-critical' is not allowed (allowed: "
                              "the cluster's default priority, research, batch-low; the platform team sets "
                              "policy.priorityClasses in the shardctl chart's values)")
    [denial] = check(REGISTRY, job(image="nvcr.io/nvidia/pytorch:24.05-py3"))
    assert "'nvcr.io/nvidia/pytorch:24.05-py3' (nvcr.io/nvidia/pytorch)" in denial.message
    assert "allowed: images from registry.example.com" in denial.message and "policy.imageRegistries" in denial.message


def test_every_field_asking_too_much_is_named_at_once() -> None:
    denials = check(REGISTRY, job(service_account="admin", priority_class="high",
                                  tolerations=[{"key": "a", "value": "b"}, {"operator": "Exists"}]))
    assert [d.field for d in denials] == ["spec.kubernetes.service_account", "spec.kubernetes.priority_class",
                                          "spec.kubernetes.tolerations[0]", "spec.kubernetes.tolerations[1]"]


GPU = AllowedToleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


@pytest.mark.parametrize("allowed,asked,ok", [
    (GPU, Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"), True),
    (GPU, Toleration(key="nvidia.com/gpu", operator="Equal", value="present", effect="NoSchedule"), True),
    (GPU, Toleration(key="nvidia.com/gpu", operator="Exists"), False),  # every effect: NoExecute too
    (GPU, Toleration(operator="Exists", effect="NoSchedule"), False),  # every key
    (GPU, Toleration(key="node-role.kubernetes.io/control-plane", operator="Exists", effect="NoSchedule"), False),
    (AllowedToleration(key="pool", value="a100"), Toleration(key="pool", value="a100"), True),
    (AllowedToleration(key="pool", value="a100"), Toleration(key="pool", value="h100"), False),
    (AllowedToleration(key="pool", value="a100"), Toleration(key="pool", operator="Exists"), False),
    (AllowedToleration(key="spot", operator="Exists", effect="NoExecute", tolerationSeconds=300),
     Toleration(key="spot", operator="Exists", effect="NoExecute", toleration_seconds=60), True),
    (AllowedToleration(key="spot", operator="Exists", effect="NoExecute", tolerationSeconds=300),
     Toleration(key="spot", operator="Exists", effect="NoExecute"), False),  # forever is longer than 300 s
    (AllowedToleration(operator="Exists"), Toleration(operator="Exists"), True),
])
def test_a_toleration_is_allowed_when_it_tolerates_no_more_than_an_allowed_one(
        allowed: AllowedToleration, asked: Toleration, ok: bool) -> None:
    assert covers(allowed, asked) is ok


def test_a_secret_referenced_anywhere_needs_to_be_listed() -> None:
    volumes = [{"name": "data", "mount_path": "/data", "claim_name": "data"},
               {"name": "hf", "mount_path": "/hf", "secret_name": "hf-token"},
               {"name": "aws", "mount_path": "/aws", "secret_name": "aws-admin"}]
    policy = Policy(imageRegistries=["registry.example.com"], secrets=["hf-token"])
    assert [(d.field, d.asked) for d in check(policy, job(volumes=volumes))] == [
        ("spec.kubernetes.volumes[2].secret_name", "Secret 'aws-admin'")]


def test_a_secret_read_as_environment_needs_to_be_listed_too() -> None:
    body = job().model_dump(mode="json", by_alias=True)
    body["spec"]["entrypoint"]["env_from"] = [{"secret": "hf-token", "keys": ["HF_TOKEN"]}, {"secret": "aws-admin"}]
    denials = check(Policy(imageRegistries=["registry.example.com"], secrets=["hf-token"]),
                    TrainingJob.model_validate(body))
    assert [d.message for d in denials] == [
        "spec.entrypoint.env_from[1].secret: Secret 'aws-admin' is not allowed (allowed: hf-token; the platform team "
        "sets policy.secrets in the shardctl chart's values)"]


def test_the_charts_default_values_are_the_safe_default_policy(tmp_path: Path) -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(values["policy"]))
    assert load_policy(path) == Policy()


@pytest.mark.parametrize("text,words", [
    ("imageRegistries: registry.example.com\n", "imageRegistries: Input should be a valid list"),
    ("imageRegistry: [registry.example.com]\n", "imageRegistry: Extra inputs are not permitted"),
    ("tolerations: [{key: a, operator: Maybe}]\n", "tolerations.0.operator"),
    ("secrets: [a\n", "not a YAML policy"),
    ("a: 1\n---\nb: 2\n", "one YAML document expected"),
])
def test_a_policy_that_is_not_one_is_one_line(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert words in str(exc.value) and len(exc.value.lines()) == 1 and str(path) in str(exc.value)


def test_a_hostile_image_reference_is_judged_at_once() -> None:
    started = time.perf_counter()
    for image in ("a" + "-a" * 250 + "!", "a." * 255 + "/x", "a/" * 255 + "!", "x" * 100_000):
        assert image_repository(image) is None
    assert time.perf_counter() - started < 0.5
