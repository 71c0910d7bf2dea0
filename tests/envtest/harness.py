"""The real control plane of ../shared/k8s-envtest, as the envtest tests use it.

`ControlPlane` starts it with the shared `up` script (its own state directory and free ports, so it
never meets another engineer's cluster on this machine), installs the CRD, runs the fake kubelet,
and can stop and restart the API server alone (an outage). The API server keeps an audit log of service
accounts' requests (AUDIT_POLICY), so a test can count a controller's own (`requests_of`). `Tenant` is
one namespace with the Helm
chart installed for real (`helm install` through helm-sdkpy), a token for the chart's
ServiceAccount (the TokenRequest API) and a user with a kubeconfig of their own; its chart values
allow the test jobs' image registry (TEST_POLICY) unless a test gives a policy of its own.
`ControllerProcess` runs `python -m orchestrator controller` with the arguments of the chart's
Deployment, under that ServiceAccount's token, reading the policy the chart rendered into its
ConfigMap: what the chart would run, outside a pod.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
ENVTEST = ROOT.parent / "shared" / "k8s-envtest"
CHART = ROOT / "charts" / "shardctl"
CRD = ROOT / "manifests" / "crd.yaml"
GROUP, VERSION, PLURAL = "shardctl.dev", "v1alpha1", "trainingjobs"
# Pod Security admission is on by default; OwnerReferencesPermissionEnforcement is not.
ADMISSION = "--enable-admission-plugins=OwnerReferencesPermissionEnforcement,PodSecurity"
# The API server's audit log, for counting a controller's requests (its ServiceAccount's): service accounts' requests
# only (the controller manager's, in kube-system, left out), one line per stage after the request was received.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
RULES_CM = ("kube-system", "fake-kubelet-rules")
# the chart's own Deployment: the fake kubelet keeps its pod Running (nothing runs in it; the real
# controller is a process on this machine with the same ServiceAccount's token)
TEST_POLICY = {"imageRegistries": ["registry.example.com"]}  # the test jobs' image, nothing else
CHART_POD_RULE = {"match": {"labels": {"app.kubernetes.io/name": "shardctl",
                                       "app.kubernetes.io/component": "controller"}}, "outcome": "run"}


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port (TIME_WAIT leftovers do not count, unlike for bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_ports() -> tuple[int, int, int]:
    """API server port (the script also takes +3814 and +3816 for the controller manager and the
    scheduler), etcd's client port (+1: peer), the fake kubelet's log port."""
    rng = random.Random()
    for _ in range(200):
        api, etcd, kubelet = rng.randrange(20000, 28000), rng.randrange(30000, 39000), rng.randrange(40000, 49000)
        if all(port_free(p) for p in (api, api + 3814, api + 3816, etcd, etcd + 1, kubelet)):
            return api, etcd, kubelet
    raise RuntimeError("no free ports for the control plane")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def write_kubeconfig(path: Path, server: str, ca: Path, namespace: str, user: str, *, token: str | None = None,
                     cert: Path | None = None, key: Path | None = None) -> Path:
    creds: dict[str, str] = {"token": token} if token else {"client-certificate": str(cert), "client-key": str(key)}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": f"{user}@envtest",
        "clusters": [{"name": "envtest", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": f"{user}@envtest", "context": {"cluster": "envtest", "user": user,
                                                              "namespace": namespace}}]}))
    path.chmod(0o600)
    return path


class ControlPlane:
    def __init__(self, state: Path, logs: Path) -> None:
        self.state, self.logs = state, logs
        self.port, self.etcd_port, self.kubelet_port = pick_ports()
        self.server = f"https://127.0.0.1:{self.port}"
        self.audit_log = logs / "audit.log"
        (logs / "audit-policy.yaml").write_text(AUDIT_POLICY)
        audit = f"--audit-policy-file={logs / 'audit-policy.yaml'} --audit-log-path={self.audit_log} " \
                "--audit-log-maxsize=500 --audit-log-mode=blocking"
        self.env = {**os.environ, "K8S_HARNESS_DIR": str(state), "K8S_HARNESS_PORT": str(self.port),
                    "K8S_HARNESS_ETCD_PORT": str(self.etcd_port), "K8S_HARNESS_APISERVER_ARGS": f"{ADMISSION} {audit}"}
        self.env.pop("KUBECONFIG", None)
        self.kubelet: subprocess.Popen | None = None
        self.cmdlines: dict[str, list[str]] = {}
        self.children: list[subprocess.Popen] = []  # components this harness restarted (not `up`)
        self.rules: dict[str, list[dict]] = {}
        self.admin_kubeconfig: Path | None = None
        self.started_up = False
        self.startup_s = 0.0  # up + CRD + fake kubelet
        self.last_outage: dict[str, float] = {}  # seconds to stop and to start the API server, last outage
        self._stopping: int | None = None  # the API server being stopped
        self._admin: Any = None

    # -- start and stop ----------------------------------------------------------------------------------
    def up(self) -> None:
        self.started_up = True  # from here on, `down` is owed even if `up` fails half-way
        r = subprocess.run([str(ENVTEST / "up")], env=self.env, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
        (self.logs / "up.log").write_text(r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"{ENVTEST / 'up'} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        self.admin_kubeconfig = Path(r.stdout.strip().splitlines()[-1])
        for name in COMPONENTS:
            pid = self.pid(name)
            if pid:
                self.cmdlines[name] = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")

    def down(self) -> None:
        if self.kubelet is not None and self.kubelet.poll() is None:
            self.kubelet.terminate()
            try:
                self.kubelet.wait(10)
            except subprocess.TimeoutExpired:
                self.kubelet.kill()
                self.kubelet.wait()
        log_dir = self.state / "log"
        if log_dir.is_dir():
            for f in log_dir.iterdir():
                shutil.copy(f, self.logs / f.name)
        if self.started_up:
            subprocess.run([str(ENVTEST / "down")], env=self.env, capture_output=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        for proc in self.children:  # reap what we restarted (`down` stopped it by its pidfile)
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    @property
    def ca(self) -> Path:
        return self.state / "pki" / "ca.crt"

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.state / "run" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    # -- the admin's view --------------------------------------------------------------------------------
    def admin(self):
        """The cluster admin's ApiClient (one per control plane; no retries: an outage shows at once)."""
        if self._admin is None:
            from kubernetes import client, config

            configuration = client.Configuration()
            config.load_kube_config(config_file=str(self.admin_kubeconfig), client_configuration=configuration)
            configuration.retries = 0
            self._admin = client.ApiClient(configuration)
        return self._admin

    def https_get(self, path: str, timeout: float = 3.0) -> tuple[int, str]:
        """GET on the API server as the admin (client certificate), without the kubernetes client."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        pki = self.state / "pki"
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(self.server + path, context=ctx, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (OSError, ssl.SSLError) as exc:
            return 0, str(exc)

    def requests_of(self, username: str) -> dict[str, tuple[str, str]]:
        """Every request of one user the audit log holds: {auditID: (verb, resource[/subresource])}; a watch counts
        once, from its start (ResponseStarted)."""
        out: dict[str, tuple[str, str]] = {}
        try:
            lines = self.audit_log.read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if (event.get("user") or {}).get("username") != username:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
            if ref.get("subresource"):
                resource += f"/{ref['subresource']}"
            out.setdefault(event["auditID"], (event.get("verb", "?"), resource))
        return out

    def api_ready(self) -> bool:
        return self.https_get("/readyz") == (200, "ok")

    def install_crd(self) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        ext = client.ApiextensionsV1Api(self.admin())
        body = yaml.safe_load(CRD.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            raise RuntimeError(f"the API server refused {CRD.relative_to(ROOT)}: {exc.status} "
                               f"{json.loads(exc.body).get('message') if exc.body else exc.reason}") from None

        def established() -> bool:
            crd = ext.read_custom_resource_definition(body["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])
        wait_for(established, 30, "the TrainingJob CRD to be established")
        # the new resource is served (discovery) before anyone uses it
        wait_for(lambda: self.https_get(f"/apis/{GROUP}/{VERSION}/{PLURAL}")[0] == 200, 30, "trainingjobs served")

    def start_kubelet(self, nodes: int = 2, gpus: int = 8) -> None:
        """The fake kubelet with `nodes` nodes of `gpus` GPUs each (the benchmark asks for more than the tests)."""
        from kubernetes import client

        core = client.CoreV1Api(self.admin())
        core.create_namespaced_config_map(RULES_CM[0], {"metadata": {"name": RULES_CM[1]},
                                                        "data": {"rules": json.dumps([CHART_POD_RULE])}})
        log = open(self.logs / "fake-kubelet.log", "ab")  # noqa: SIM115 - the child writes to it
        self.kubelet = subprocess.Popen(
            [sys.executable, str(ENVTEST / "fake_kubelet.py"), "--kubeconfig", str(self.admin_kubeconfig),
             "--nodes", str(nodes), "--gpus", str(gpus), "--kubelet-port", str(self.kubelet_port), "--run-seconds", "1",
             "--rules-configmap", "/".join(RULES_CM), "--pidfile", str(self.state / "run" / "fake-kubelet.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        log.close()

        def ready_nodes() -> bool:
            if self.kubelet.poll() is not None:
                raise RuntimeError(f"the fake kubelet exited: {(self.logs / 'fake-kubelet.log').read_text()[-2000:]}")
            listed = core.list_node().items
            return len([n for n in listed if any(c.type == "Ready" and c.status == "True"
                                                 for c in n.status.conditions or [])]) == nodes
        wait_for(ready_nodes, 60, f"{nodes} Ready fake nodes")

    def set_rules(self, namespace: str, rules: list[dict]) -> None:
        """The fake kubelet's rules for pods in `namespace` (each rule's match is narrowed to it)."""
        from kubernetes import client

        self.rules[namespace] = [{**r, "match": {**r.get("match", {}), "namespace": namespace}} for r in rules]
        every = [CHART_POD_RULE] + [r for rs in self.rules.values() for r in rs]
        client.CoreV1Api(self.admin()).patch_namespaced_config_map(
            RULES_CM[1], RULES_CM[0], {"data": {"rules": json.dumps(every)}})
        time.sleep(1.2)  # the fake kubelet re-reads its rules at most once a second

    # -- an API server outage ----------------------------------------------------------------------------
    def stop_apiserver(self) -> None:
        """SIGTERM to the API server; returns once it no longer accepts connections (the outage has begun).
        Its graceful shutdown may go on for seconds after that: start_apiserver waits for its end."""
        pid = self.pid("kube-apiserver")
        assert pid, "the API server is not running"
        os.kill(pid, signal.SIGTERM)
        self._stopping = pid
        wait_for(lambda: not listening(self.port), 20, "the API server to stop accepting connections")

    def _reap_apiserver(self) -> None:
        pid = self._stopping
        if pid is None:
            return
        if alive(pid):  # what is left of its graceful shutdown matters to nobody: it accepts no connections
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not alive(pid), 10, "the old API server process to die")
        for proc in self.children:
            if proc.pid == pid:
                proc.wait(10)
        self._stopping = None

    def _start(self, name: str) -> None:
        log = open(self.state / "log" / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(self.cmdlines[name], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        (self.state / "run" / f"{name}.pid").write_text(str(proc.pid))  # `down` stops it by this pidfile
        self.children.append(proc)

    def start_apiserver(self) -> None:
        self._reap_apiserver()
        assert self.pid("kube-apiserver") is None
        wait_for(lambda: not listening(self.port), 30, f"nothing to listen on port {self.port}")
        self._start("kube-apiserver")
        wait_for(self.api_ready, 90, "the API server to be ready again")
        # the scheduler must have renewed its Lease with this API server (whole seconds: renewTime is cut to them)
        self.ensure_components(since=datetime.now(UTC).replace(microsecond=0))

    def ensure_components(self, since: datetime | None = None) -> None:
        """The controller manager and the scheduler after an outage. The scheduler exits when it cannot renew
        its leader Lease (as in a cluster, where its kubelet restarts it), possibly only after the API server
        is back (seen: a burst of 403s from a restarted API server whose RBAC cache is still empty, then
        "Leaderelection lost"): so this restarts it until it holds a fresh Lease."""
        if "kube-controller-manager" in self.cmdlines and self.pid("kube-controller-manager") is None:
            self._start("kube-controller-manager")
        if "kube-scheduler" not in self.cmdlines:
            return

        def scheduling() -> bool:
            if self.pid("kube-scheduler") is None:
                from kubernetes import client

                try:  # its Lease outlived it: a successor would wait it out (15 s)
                    client.CoordinationV1Api(self.admin()).delete_namespaced_lease("kube-scheduler", "kube-system")
                except Exception:  # noqa: BLE001 - absent already
                    pass
                self._start("kube-scheduler")
            return self._scheduler_leads(since)
        wait_for(scheduling, 60, "the scheduler to hold a fresh lease")

    def _scheduler_leads(self, since: datetime | None) -> bool:
        """It renewed its Lease in the last 10 s (and after `since`): else the fake kubelet binds pods itself,
        but only after 30 s of a stale scheduler Lease."""
        if self.pid("kube-scheduler") is None:
            return False
        code, text = self.https_get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler")
        if code != 200:
            return False
        renewed = (json.loads(text).get("spec") or {}).get("renewTime") or ""
        try:
            at = datetime.strptime(renewed[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            return False
        return (datetime.now(UTC) - at).total_seconds() < 10 and (since is None or at >= since)


# -- the chart, its identity, a user -------------------------------------------------------------------------
def helm_install(cp: ControlPlane, namespace: str, values: dict | None = None) -> list[dict]:
    """`helm install shardctl charts/shardctl -n NAMESPACE` for real; returns the rendered objects."""
    import helm_sdkpy as helm

    config = helm.Configuration(namespace=namespace, kubeconfig=str(cp.admin_kubeconfig))
    release = asyncio.run(helm.Install(config).run("shardctl", str(CHART), values=values or {}, wait=False,
                                                   timeout=60))
    return [d for d in yaml.safe_load_all(release["manifest"]) if d]


@dataclass
class Tenant:
    """A namespace with the chart installed in it (the chart's default: the controller watches its own
    namespace), the controller's kubeconfig (the chart's ServiceAccount) and a user's."""

    cp: ControlPlane
    namespace: str
    workdir: Path
    objects: list[dict] = field(default_factory=list)
    controller_kubeconfig: Path | None = None
    user_kubeconfig: Path | None = None

    @property
    def deployment(self) -> dict:
        return next(o for o in self.objects if o["kind"] == "Deployment")

    @property
    def service_account(self) -> str:
        return next(o for o in self.objects if o["kind"] == "ServiceAccount")["metadata"]["name"]


def make_tenant(cp: ControlPlane, namespace: str, workdir: Path, labels: dict[str, str] | None = None,
                chart_values: dict | None = None) -> Tenant:
    from kubernetes import client

    admin = cp.admin()
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespace({"metadata": {"name": namespace, "labels": labels or {}}})
    # the ServiceAccount admission refuses pods until the namespace's "default" account exists
    wait_for(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items),
             30, f"serviceaccount {namespace}/default")
    tenant = Tenant(cp, namespace, workdir)
    tenant.objects = helm_install(cp, namespace, {"policy": TEST_POLICY, **(chart_values or {})})
    token = core.create_namespaced_service_account_token(
        tenant.service_account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    tenant.controller_kubeconfig = write_kubeconfig(workdir / "controller.kubeconfig", cp.server, cp.ca, namespace,
                                                    f"system:serviceaccount:{namespace}:{tenant.service_account}",
                                                    token=token)
    # a user of shardctl: may run TrainingJobs and read what they make, nothing else (dev.kubeconfig's identity)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "trainer"},
        "rules": [{"apiGroups": [GROUP], "resources": [PLURAL],
                   "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                  {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get"]},
                  {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
                  {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "trainer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]})
    # the API server's RBAC authorizer learns new Roles from a watch: a request at once may still be refused (403)
    authz = client.AuthorizationV1Api(admin)
    review = {"spec": {"user": "dev", "resourceAttributes": {"namespace": namespace, "verb": "create",
                                                             "group": GROUP, "resource": PLURAL}}}
    wait_for(lambda: authz.create_subject_access_review(review).status.allowed, 30,
             f"the user's Role in {namespace} to be in force")
    pki = cp.state / "pki"
    tenant.user_kubeconfig = write_kubeconfig(workdir / "user.kubeconfig", cp.server, cp.ca, namespace, "dev",
                                              cert=pki / "dev.crt", key=pki / "dev.key")
    return tenant


# -- the controller -----------------------------------------------------------------------------------------
_HELP: str | None = None


def controller_help() -> str:
    global _HELP
    if _HELP is None:
        _HELP = subprocess.run([sys.executable, "-m", "orchestrator", "controller", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60).stdout
    return _HELP


def port_flags() -> list[str]:
    """The controller's options that take a port (a health or metrics endpoint), from its --help."""
    return sorted(set(re.findall(r"(--[a-z][a-z-]*-port)\b", controller_help())))


def _expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in container args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


class ControllerProcess:
    """`python -m orchestrator ARGS` with the chart's Deployment's args and env, the ServiceAccount's kubeconfig."""

    def __init__(self, tenant: Tenant, identity: str, log_path: Path, extra_args: list[str] | None = None) -> None:
        container = tenant.deployment["spec"]["template"]["spec"]["containers"][0]
        env = {"POD_NAMESPACE": tenant.namespace, "POD_NAME": identity}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = _expand(var["value"], env)
        args = [_expand(a, env) for a in container.get("args") or []]
        for i, a in enumerate(args):  # the chart mounts its policy ConfigMap there: here it is a local file
            if a.startswith("--policy="):
                policy = next(o for o in tenant.objects if o["kind"] == "ConfigMap"
                              and o["metadata"]["name"].endswith("-policy"))
                path = log_path.parent / f"policy-{tenant.namespace}.yaml"
                path.write_text(policy["data"]["policy.yaml"])
                args[i] = f"--policy={path}"
        self.ports: dict[str, int] = {}
        for i, a in enumerate(args):  # a fixed port from the chart would clash between two replicas here
            m = re.fullmatch(r"(--[a-z-]*port)=(\d+)", a)
            if m:
                self.ports[m.group(1)] = free_port()
                args[i] = f"{m.group(1)}={self.ports[m.group(1)]}"
        for flag in port_flags():
            if flag not in self.ports:
                self.ports[flag] = free_port()
                args.append(f"{flag}={self.ports[flag]}")
        self.args = args + ["--kubeconfig", str(tenant.controller_kubeconfig)] + (extra_args or [])
        self.identity = identity
        self.log_path = log_path
        self.env = {**os.environ, **env}
        self.env.pop("KUBECONFIG", None)
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc: subprocess.Popen | None = None

    def start(self) -> ControllerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *self.args], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def url(self, path: str) -> str:
        """http://127.0.0.1:PORT/path on the health/metrics port (metrics on their own port if there is one)."""
        if not self.ports:
            raise AssertionError("the controller has no port option (--health-port / --metrics-port): "
                                 f"no health or metrics endpoint to reach.\n{controller_help()}")
        if path.startswith("/metrics") and "--metrics-port" in self.ports:
            port = self.ports["--metrics-port"]
        else:
            port = self.ports.get("--health-port") or next(iter(self.ports.values()))
        return f"http://127.0.0.1:{port}{path}"


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


# -- jobs ----------------------------------------------------------------------------------------------------
def training_job(name: str, *, nodes: int = 2, gpus: int = 2, image: str | None = "registry.example.com/train:1",
                 **kubernetes: Any) -> dict:
    k8s = {**({"image": image} if image else {}), **kubernetes}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "target": "kubernetes",
            "entrypoint": {"script": "/app/train.py", "args": ["--micro-batch", "{micro_batch}"]},
            "model": {"name_or_path": "/models/llama-7b", "parameters": "7B"},
            "backend": "deepspeed", "sharding": "grad_op",
            "batch": {"micro": 4, "global": 4 * nodes * gpus},
            "resources": {"nodes": nodes, "gpus_per_node": gpus},
            "checkpoint": {"dir": "/ckpt/run", "every_steps": 100},
            "kubernetes": k8s,
        },
    }


class Kube:
    """The few reads and writes the tests make, as plain dicts."""

    def __init__(self, api_client) -> None:
        from kubernetes import client

        self.client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    def plain(self, obj: Any) -> Any:
        return self.client.sanitize_for_serialization(obj)

    def create_tj(self, namespace: str, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def tj(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, namespace: str, name: str) -> dict:
        return ((self.tj(namespace, name) or {}).get("status")) or {}

    def events(self, namespace: str, name: str, kind: str = "TrainingJob") -> list[dict]:
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},involvedObject.kind={kind}").items
        return [self.plain(e) for e in items]

    def job(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.plain(self.batch.read_namespaced_job(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def lease(self, namespace: str, name: str = "shardctl-controller") -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.plain(self.coordination.read_namespaced_lease(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


@contextmanager
def explained(kube: Kube, namespace: str, name: str, *controllers: ControllerProcess) -> Iterator[None]:
    """An assertion failing inside says what the cluster and the controllers show."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(kube, namespace, name, *controllers)}") from None


def diagnose(kube: Kube, namespace: str, name: str, *controllers: ControllerProcess) -> str:
    """What a failed assertion should show: the status, the events, the controllers' last log lines."""
    parts = []
    try:
        status = kube.status(namespace, name)
        status = {**status, "attempts": [{k: v for k, v in a.items() if k != "spec"}
                                         for a in status.get("attempts") or []]}
        parts.append(f"TrainingJob {namespace}/{name} status (attempts without their spec): "
                     f"{json.dumps(status)[-3000:]}")
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        parts.append(f"status: unreadable ({type(exc).__name__})")
    try:
        parts.append("events: " + json.dumps([(e["type"], e["reason"], e["message"])
                                              for e in kube.events(namespace, name)])[-2000:])
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        parts.append(f"events: unreadable ({exc})")
    for c in controllers:
        parts.append(f"controller {c.identity} log (tail):\n" + c.log()[-3000:])
    return "\n".join(parts)


@contextmanager
def outage(cp: ControlPlane) -> Iterator[None]:
    """The API server process alone is stopped (etcd, the controller manager and the scheduler stay), and
    started again with the same flags when the block ends, even if it failed."""
    t0 = time.monotonic()
    cp.stop_apiserver()
    cp.last_outage = {"stop_s": time.monotonic() - t0}
    try:
        yield
    finally:
        t1 = time.monotonic()
        cp.start_apiserver()
        cp.last_outage["start_s"] = time.monotonic() - t1


def metric(name: str) -> str:
    """A sample's full name (orchestrator/controller/metrics.py's prefix; imported late: prometheus_client)."""
    from orchestrator.controller.metrics import PREFIX

    return f"{PREFIX}_{name}"


def scrape(c: ControllerProcess) -> dict[tuple[str, tuple], float] | None:
    """The controller's /metrics as {(sample name, sorted labels): value}; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    code, text = http_get(c.url("/metrics"))
    if code != 200:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
