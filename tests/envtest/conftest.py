"""Fixtures for the tests against a real Kubernetes control plane (../shared/k8s-envtest).

The control plane starts once for the package (`up` with Pod Security admission and
OwnerReferencesPermissionEnforcement, the CRD from manifests/crd.yaml, the fake kubelet with 2 nodes of
8 GPUs) and is stopped with `down` at the end, which stops exactly what `up` started. Without
../shared/k8s-envtest the tests skip, unless SHARDCTL_REQUIRE_ENVTEST=1 (scripts/test sets it when the
folder is there): then they fail.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import helm_sdkpy  # noqa: F401 (scripts/bootstrap installs it: missing, these tests fail rather than skip)
import kubernetes  # noqa: F401 (the kubernetes extra, likewise)
import pytest

from tests.envtest.harness import ENVTEST, ControllerProcess, ControlPlane, Kube, Tenant, make_tenant


def _problem() -> str | None:
    if not ENVTEST.is_dir():
        return f"no real control plane: {ENVTEST} is absent (../shared beside the repository)"
    missing = [n for n in ("up", "down", "fake_kubelet.py") if not (ENVTEST / n).is_file()]
    if missing:
        return f"{ENVTEST} lacks {', '.join(missing)}"
    tools = [t for t in ("openssl", "curl") if shutil.which(t) is None]
    if tools:
        return f"{ENVTEST}/up needs {', '.join(tools)}"
    return None


@pytest.fixture(scope="package")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    problem = _problem()
    if problem:
        if os.environ.get("SHARDCTL_REQUIRE_ENVTEST") == "1":
            pytest.fail(f"SHARDCTL_REQUIRE_ENVTEST=1 but {problem}")
        pytest.skip(problem)
    state = Path(tempfile.mkdtemp(prefix="shardctl-envtest-"))  # `down` removes it
    logs = tmp_path_factory.mktemp("envtest-logs")  # the components' logs are copied here before `down`
    t0 = time.monotonic()
    for attempt in (1, 2):  # a component that dies while starting (a port taken meanwhile) gets one more try
        cp = ControlPlane(state, logs)
        try:
            cp.up()
            cp.install_crd()
            cp.start_kubelet()
            break
        except RuntimeError as exc:
            cp.down()
            if attempt == 2:
                raise
            print(f"the control plane did not start ({str(exc).splitlines()[0]}); starting it again on new ports")
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir(mode=0o700)
        except BaseException:
            cp.down()
            raise
    cp.startup_s = time.monotonic() - t0
    try:
        yield cp
    finally:
        cp.down()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="package")
def kube(control_plane: ControlPlane) -> Kube:
    """The cluster admin's view (for setting up and for checking; never what the controller uses)."""
    return Kube(control_plane.admin())


@pytest.fixture()
def tenant(control_plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest,
           kube: Kube) -> Iterator[Callable[..., Tenant]]:
    """make(labels=..., chart_values=...): a fresh namespace with the chart installed in it."""
    made: list[Tenant] = []

    def make(labels: dict[str, str] | None = None, chart_values: dict | None = None) -> Tenant:
        base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40].strip("-")
        namespace = f"{base}-{secrets.token_hex(2)}"
        workdir = tmp_path / namespace
        control_plane.ensure_components()  # a scheduler that an earlier outage ended is back
        workdir.mkdir()
        t = make_tenant(control_plane, namespace, workdir, labels, chart_values)
        made.append(t)
        return t

    yield make
    for t in made:
        control_plane.rules.pop(t.namespace, None)
        try:
            kube.core.delete_namespace(t.namespace, propagation_policy="Background")
        except Exception:  # noqa: BLE001 - the API server may be the thing that failed
            pass


@pytest.fixture()
def controllers(tmp_path: Path) -> Iterator[Callable[..., ControllerProcess]]:
    """start(tenant, identity=None, extra_args=None): a controller process as the chart runs it; all are
    stopped (SIGTERM, then SIGKILL) when the test ends."""
    started: list[ControllerProcess] = []

    def start(t: Tenant, identity: str | None = None, extra_args: list[str] | None = None) -> ControllerProcess:
        identity = identity or f"shardctl-{len(started)}"
        c = ControllerProcess(t, identity, tmp_path / f"controller-{identity}.log", extra_args).start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop(signal.SIGTERM, timeout=10)
