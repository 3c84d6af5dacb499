"""Run the real operator (`flare-operator run`) as a subprocess against a test control plane, and
build the consortium's objects (org namespaces, grants, policies) with unique names per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flare_operator.api.job import FINISHED_PHASES
from tests.sample_data import CRD_DIR
from tests.support.kube_fixtures import WaitedInVain, strip_finalizers, wait_for


def install_crds(cp) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
    cp.kubectl("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=flare-operator",
               "--timeout=60s")


@dataclass
class Consortium:
    """Org names, and namespaces named after them, unique to one test."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:5])

    def org(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    @property
    def modeller(self) -> str:
        return self.org("modeller")


def consortium_namespaces(cp) -> tuple[Consortium, str, str, str]:
    """The CRDs, and a fresh consortium's namespaces org-a, org-b and the modeller's, each labelled
    with its org: (consortium, org-a, org-b, modeller)."""
    install_crds(cp)
    c = Consortium()
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    return c, a, b, m


def remove_namespaces(cp, *namespaces: str) -> None:
    """End of a test: strip finalizers (no operator runs any more to honour them), then delete.

    Left behind, objects with the operator's finalizer would be adopted by the next test's
    operator (it watches all namespaces) and keep it busy retrying their deletion.
    """
    api = cp.api_client()
    try:
        for ns in namespaces:
            strip_finalizers(api, ns)
            cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    finally:
        api.close()


def create_org_namespace(cp, namespace: str, org: str) -> None:
    cp.kubectl("create", "namespace", namespace)
    cp.kubectl("label", "namespace", namespace, f"flareop.io/org={org}")


def apply(cp, *objs: dict) -> None:
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))


def get(cp, kind: str, namespace: str, name: str) -> dict | None:
    result = cp.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def grant(namespace: str, dataset: str, consumer: str, *, path: str = "/data/scl.csv", models=("esm2-finetune",),
          **spec) -> dict:
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "DatasetGrant",
            "metadata": {"name": dataset, "namespace": namespace},
            "spec": {"dataset": {"id": dataset, "path": path, "sampleCount": 100},
                     "consumers": [consumer], "models": [{"id": m} for m in models], **spec}}


def policy(namespace: str, mode: str, **spec) -> dict:
    """The org's OrgPolicy (``default``) at its site: ``mode`` Automatic or Manual, more spec as keywords."""
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "OrgPolicy", "metadata": {"name": "default", "namespace": namespace},
            "spec": {"approvalMode": mode, **spec}}


def compute(namespace: str, name: str, datasets: list[tuple[str, str]], *, active: bool = True) -> dict:
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "ComputeSpec",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"id": "esm2-finetune", "version": "1.0.0"},
                     "datasets": [{"org": o, "id": d} for o, d in datasets],
                     "client": {"cpu": "1", "memory": "1Gi"}, "active": active}}


def job(namespace: str, name: str, *, rounds: int = 5, epsilon: float | None = 6, compute_name: str = "esm2") -> dict:
    dp = {"enabled": True, "epsilon": epsilon} if epsilon else {"enabled": False}
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": name, "namespace": namespace},
            "spec": {"computeSpecRef": {"name": compute_name}, "rounds": rounds,
                     "parameters": {"preset": "tiny"}, "privacy": {"differentialPrivacy": dp}}}


def approval(namespace: str, name: str, job_ns: str, job_name: str, content_hash: str, decision: str = "Approve",
             reason: str = "") -> dict:
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "JobApproval", "metadata": {"name": name, "namespace": namespace},
            "spec": {"job": {"namespace": job_ns, "name": job_name}, "contentHash": content_hash,
                     "decision": decision, "reason": reason}}


def decisions(obj: dict) -> dict[str, str]:
    return {a["org"]: a["decision"] for a in (obj.get("status") or {}).get("approvals", [])}


def wait_job(cp, ns, name, phase, timeout=90) -> dict:
    return wait_phase(cp, "federatedjob", ns, name, phase, timeout=timeout)


def ledger(cp, ns: str, grant_name: str) -> dict:
    return (get(cp, "datasetgrant", ns, grant_name).get("status") or {})


HEALTHY_PHASES = frozenset({"Ready", "Running", "Succeeded"})


def wait_phase(cp, kind: str, namespace: str, name: str, phase: str, timeout: float = 120) -> dict:
    def reached():
        obj = get(cp, kind, namespace, name)
        now = (obj or {}).get("status", {}).get("phase")
        if kind.lower() == "federatedjob" and now in FINISHED_PHASES and now != phase:
            # a finished job never changes phase again: say why now instead of timing out
            raise WaitedInVain(f"{kind} {namespace}/{name} ended {now}, not {phase}; "
                                 f"status: {json.dumps(obj.get('status'), indent=1)}")
        # An image missing from an offline node never appears by waiting (a test that gives a
        # missing image on purpose waits for another phase: Pending, Failed).
        missing_image = phase in HEALTHY_PHASES and next(
            (c["message"] for c in (obj or {}).get("status", {}).get("conditions") or []
             if "ErrImageNeverPull" in (c.get("message") or "")), None)
        if missing_image:
            raise WaitedInVain(f"{kind} {namespace}/{name}: {missing_image}")
        return obj if now == phase else None

    try:
        return wait_for(reached, timeout=timeout, message=f"{kind} {namespace}/{name} phase {phase}")
    except TimeoutError as err:
        obj = get(cp, kind, namespace, name)
        raise AssertionError(f"{err}; status: {json.dumps((obj or {}).get('status'), indent=1)}") from None


def wait_round(cp, namespace: str, name: str, rounds: int, timeout: float = 240, logs: Path | None = None) -> dict:
    """The FederatedJob's status once `rounds` rounds are done. A job that ends first fails at once; a
    timeout says where the job stands and, with `logs` (the federation's workdir), the last errors its
    NVFlare participants logged."""
    def done():
        st = (get(cp, "federatedjob", namespace, name) or {}).get("status") or {}
        if st.get("phase") in FINISHED_PHASES:
            raise WaitedInVain(f"federatedjob {namespace}/{name} ended {st['phase']} before round {rounds}: "
                               f"{json.dumps(st.get('conditions'))}")
        return st if (st.get("currentRound") or 0) >= rounds else None

    try:
        return wait_for(done, timeout=timeout, message=f"federatedjob {namespace}/{name}: {rounds} round(s) done")
    except TimeoutError as err:
        st = (get(cp, "federatedjob", namespace, name) or {}).get("status") or {}
        errors = [f"{log.parent.name}/{log.name}: {line[-300:]}" for log in sorted((logs or Path("/nonexistent")).rglob("log.txt"))
                  for line in log.read_text(errors="replace").splitlines()[-400:] if "ERROR" in line or "Error" in line][-12:]
        raise AssertionError(f"{err}; phase {st.get('phase')}, round {st.get('currentRound')}, conditions "
                             f"{json.dumps(st.get('conditions'))}; participants' last errors: {errors}") from None


class OperatorProcess:
    """`flare-operator run` in its own process group, logs in a file, stopped with SIGTERM."""

    def __init__(self, cp, workdir: Path, config: dict, name: str = "operator", kubeconfig: Path | None = None,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()):
        self.cp = cp
        self.env = env or {}
        self.args = args  # more `flare-operator run` arguments (e.g. --liveness URL)
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.kubeconfig = kubeconfig or cp.kubeconfig
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.workdir), **self.env}
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flare_operator.cli", "run", "--config", str(self.config_path),
             "--kubeconfig", str(self.kubeconfig), *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)
        finally:
            self.log.close()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_operator(cp, workdir: Path, config: dict, name: str = "operator"):
    op = OperatorProcess(cp, workdir, config, name).start()
    try:
        yield op
    except BaseException:
        print(f"--- {op.log_path} (last lines)\n{op.tail(120)}")
        raise
    finally:
        op.stop()


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (NVFlare participants of a workdir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            found.append(f"{proc.name}: {cmd}")
    return found


def gateway_config(org: str, namespace: str) -> dict:
    # Tests' data lives in temporary folders anywhere: "/" allows it (the default, [], allows no path).
    return {"org": org, "site": org, "namespace": namespace, "hubNamespace": namespace, "runtime": "process",
            "dataRoots": ["/"]}


def operator_config(workdir: Path, gateways: list[dict], mode: str = "all", **extra) -> dict:
    """Tests share one API server: pass namespaces=[the test's consumer namespace] so the
    orchestrator never adopts another test's leftovers."""
    return {"mode": mode, "runtime": "process", "workdir": str(workdir / "flare"), "resyncSeconds": 2,
            "heartbeatSeconds": 5, "gateways": gateways, **extra}


def seed_from_env(variable: str) -> int:
    """A randomised suite's seed: 0 unless `variable` says otherwise (`make test` repeats its choices),
    a fresh one for `variable=random`, or the number given (a replay). Print it where it is used."""
    import random

    value = os.environ.get(variable, "0")
    return random.SystemRandom().randrange(2**32) if value == "random" else int(value)


def stop_signal_name(code: int) -> str:
    return signal.Signals(-code).name if code < 0 else str(code)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int) -> tuple[int, str]:
    """The operator's liveness probe (`--liveness http://127.0.0.1:PORT/healthz`): (HTTP status, body);
    status 0 when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError as err:
        return 0, str(err)


def scrape(port: int) -> dict[str, float]:
    """The operator's Prometheus metrics as {'name{labels}': value}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def reconciles(port: int, kind: str) -> float:
    return scrape(port).get(f'flareop_reconcile_total{{kind="{kind}",result="ok"}}', 0.0)


@dataclass
class Federation:
    """What `automatic_federation` set up: the modeller namespace with a Ready ComputeSpec `esm2`,
    the two data owners, and the operator processes (the last one is the live one)."""

    modeller: str
    orgs: tuple[str, str]
    operators: list[OperatorProcess]
    config: dict
    metrics_port: int

    @property
    def operator(self) -> OperatorProcess:
        return self.operators[-1]


@contextmanager
def automatic_federation(cp, e2e_data: dict, tmp_path: Path, org_b_datasets: dict[str, Path] | None = None,
                         org_b_policy: str = "Automatic"):
    """Two orgs (Automatic policies) granting their generated datasets to a modeller, the operator
    (process runtime, metrics on), and a Ready ComputeSpec `esm2` over both orgs' datasets.
    ``org_b_datasets`` ({dataset id: path}): org-b grants these instead of its one ``scl-b``.
    ``org_b_policy="Manual"``: org-b decides jobs by JobApproval (its gateway serves the webhook)."""
    install_crds(cp)
    c = Consortium()
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    paths = [s["path"] for s in e2e_data["sites"].values()]
    b_datasets = org_b_datasets or {"scl-b": paths[1]}
    apply(cp, grant(a, "scl-a", m, path=str(paths[0])),
          *(grant(b, dataset, m, path=str(path)) for dataset, path in b_datasets.items()),
          policy(a, "Automatic"), policy(b, org_b_policy))
    port = free_port()
    gateway_b = gateway_config(b, b) | ({"webhookPort": free_port()} if org_b_policy == "Manual" else {})
    config = operator_config(tmp_path, [gateway_config(a, a), gateway_b], namespaces=[m], metricsPort=port)
    fed = Federation(m, (a, b), [OperatorProcess(cp, tmp_path, config).start()], config, port)
    try:
        apply(cp, compute(m, "esm2", [(a, "scl-a"), *((b, dataset) for dataset in b_datasets)]))
        wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=180)
        yield fed
    except BaseException:
        for op in fed.operators:
            print(f"--- {op.log_path}\n{op.tail(150)}")
        raise
    finally:
        fed.operator.stop()
        remove_namespaces(cp, a, b, m)
        wait_for(lambda: not processes_under(tmp_path / "flare"), timeout=60, message="no participant left")
