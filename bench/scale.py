"""Scale: one hub, N orgs, 10 ComputeSpecs and 10 FederatedJobs at once (kubernetes runtime, kwok nodes).

For each N in --orgs (e.g. 10,50,100), in a fresh local control plane (tests/support/controlplane.py:
etcd, kube-apiserver, controller-manager, scheduler, kwok nodes and fake pods), with two operator
processes (`flare-operator run`, runtime kubernetes, adminRoute none, resyncSeconds 5): the hub
operator (mode orchestrator, no gateways) and one gateways process (mode gateway, all N gateways):
- the hub's consumer namespace `modeller` and N org namespaces `org-000`...; in each org's
  namespace a DatasetGrant (to `modeller`, esm2-finetune, DP required, an epsilon budget) and an
  Automatic OrgPolicy; every org's gateway in the gateways process's `gateways` list;
- the batch: 10 ComputeSpecs over 10..min(N, 64) orgs each (sizes spread evenly, orgs taken
  round-robin so every org serves about as many federations; 64 is the CRD's maxItems of
  spec.datasets, so 100 sites cannot be one ComputeSpec), applied back to back, and right after
  them 10 FederatedJobs (one per ComputeSpec, DP epsilon 6) in one `kubectl apply`. Every org
  answers a Compute and a Job AccessRequest per federation it is in: 2 x sum(sizes) requests.

Production mapping: the hub operator is what a hub runs (mode orchestrator: ComputeSpecs,
FederatedJobs, the AccessRequests' answers, NVFlare servers), so its RSS, CPU and API requests are
the hub's own footprint at N orgs (the issue's target: RSS < 250 MB at 100 orgs, flat after the
batch). In production each org runs its own gateway (mode gateway) in its own cluster; here one
process holds all N gateways (each is two Kopf operators, hub side and site side, namespaced to its
org's namespace: the code path of a gateway with a hub kubeconfig, minus the second API server) and
stands in for N site processes: its CPU, memory, threads and API traffic are split over N processes
and N API servers in production, its RSS per gateway is an estimate of one site's share (one site
process also pays the interpreter's base alone). Both processes share one API server and 2 cores, so
the gateways' load still slows the hub here: the hub's latencies are an upper bound.

Printed per N (YAML, like compute_reconcile.py), from watches (no polling) and /proc:
- setup: control plane start, operators start -> N Gateways registered;
- AccessRequests: expected, existing, decided, first apply -> all decided;
- ComputeSpec apply -> every StatefulSet (server + a client per org) exists, p50/p95, and the same
  StatefulSets applied directly with kubectl into another namespace afterwards (baseline: same
  run, same API server, the operators still running) and the ratio; ComputeSpec apply -> Ready;
- FederatedJob apply -> every org answered; and "submittable -> submission pass": from the later
  of the job's last approval and its ComputeSpec's Ready to the hub operator's pass that submits. With
  adminRoute none (kwok pods run no NVFlare) that pass ends in phase Queued, Ready=False reason
  ServerUnreachable: handlers/run.py `Run.step` found the job admitted and the federation
  provisioned and asked `runtime.admin()` for the FLARE API session — the submission itself is
  the only step missing. That is what "submitted" means here;
- for each of the two processes, its RSS and CPU every second (its child processes included: the hub
  operator's provisioner process, main.py) (/proc/<pid>/status, /proc/<pid>/stat):
  at gateways registered, peak, after the batch, a slope over the last part (the settle window: 20 s
  with no new input) and a flat/growing verdict, threads and sockets; for the gateways process also
  RSS per gateway (RSS / N, the process's base included, and the batch's growth / N); the control
  plane's and the bench's own CPU;
- each process's API requests per reconcile pass and per second (its Prometheus counters, one
  metricsPort each) and both together, for the batch and the settle window, and what the API server
  counted on flareop.io resources (including Kopf's own patches and watches, which the operators'
  counters do not see).

--budget (default 780 s, plus teardowns: under 15 min) bounds the whole run: each org count gets a share by sqrt(N); a batch
that is not through when its share runs out is cut, and the rows say how far it got (done x/y).
With --profile every thread of both processes is sampled (bench/stack_sampler.py, stacks-N-hub.json
and stacks-N-gateways.json): hottest frames, event-loop lag, the thread pool's backlog, per process.

    .venv/bin/python bench/scale.py --orgs 10,50,100 [--settle 20] [--budget 840] [--profile] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# This checkout's operator, here and in the operator process (not whatever the venv's editable install names).
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "operator"), os.environ.get("PYTHONPATH")]))

from flare_operator.api.access_request import ANNOTATION_KIT  # noqa: E402
from flare_operator.builders import naming  # noqa: E402
from flare_operator.config import LABEL_ORG  # noqa: E402
from tests.operator_harness import (  # noqa: E402
    OperatorProcess,
    apply,
    compute,
    free_port,
    gateway_config,
    grant,
    install_crds,
    job,
    policy,
    scrape,
)
from tests.support.controlplane import ControlPlane  # noqa: E402

GROUP, VERSION = "flareop.io", "v1alpha1"
MODELLER = "modeller"
MAX_SITES = 64  # ComputeSpec spec.datasets maxItems (api/compute.py)
TICK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent
# The two operator processes: the hub (mode orchestrator) and every org's gateway in one (mode gateway).
HUB, GATEWAYS = "hub", "gateways"


def who_label(who: str, n: int) -> str:
    """The report's name of a process."""
    return "hub operator" if who == HUB else f"gateways process ({n} gateways)"


def deltas_of(n: int) -> dict[str, str]:
    """Whose Prometheus counters the report differences: each process, and both ("": summed)."""
    return {HUB: who_label(HUB, n), GATEWAYS: who_label(GATEWAYS, n), "": "both processes"}


def settle_phase(finished: bool) -> str:
    return "idle (settle)" if finished else "after the cut (still converging)"


def stacks(work: Path, n: int, who: str) -> Path:
    """--profile: where bench/stack_sampler.py writes a process's samples."""
    return work / f"stacks-{n}-{who}.json"


# --- measuring -----------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _threads_sockets(pid: int) -> tuple[int, int]:
    """(threads, open sockets) of a process: each socket of an asyncio TLS connection (Kopf's aiohttp
    sessions: watches and requests) holds a read buffer of up to 256 KiB (asyncio/sslproto.py)."""
    threads = sockets = 0
    try:
        threads = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Threads:"))
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                sockets += os.readlink(fd.path).startswith("socket:")
            except OSError:
                pass
    except (OSError, StopIteration):
        pass
    return threads, sockets


def _cpu_by_name(pids: list[int]) -> Counter:
    """CPU seconds per process name: the control plane's components apart (each is `flarecp
    <component>`, hack/controlplane: named by that argument)."""
    out: Counter = Counter()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        name = Path(argv[0]).name
        if name == "flarecp" and len(argv) > 1:
            name = argv[1]
        out[name] += _cpu_seconds(pid) or 0.0
    return out


def object_sizes(api_client) -> dict:
    """Mean JSON bytes of the operator's objects and the parts the API server decodes and encodes on
    every write besides the spec: managedFields, annotations (Kopf's last-handled-configuration), status."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    out = {}
    for plural in ("accessrequests", "computespecs", "federatedjobs"):
        items = custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        if not items:
            continue
        def size(part, items=items) -> int:
            return round(sum(len(json.dumps(part(o), separators=(",", ":"))) for o in items) / len(items))

        out[plural] = {"objects": len(items), "bytes": size(lambda o: o),
                       "managedFields": size(lambda o: o["metadata"].get("managedFields") or []),
                       "annotations": size(lambda o: o["metadata"].get("annotations") or {}),
                       "status": size(lambda o: o.get("status") or {})}
    return out


def _tree(pid: int) -> list[int]:
    """A process and its descendants (the hub operator's provisioner process: main.py)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                pass
    return found


class ProcSampler(threading.Thread):
    """Every second: one operator process's RSS and CPU seconds (its child processes included), the
    control plane's and this process's CPU."""

    def __init__(self, op_pid: int, cp_pids: list[int], t0: float):
        super().__init__(daemon=True, name="proc-sampler")
        self.op_pid, self.cp_pids, self.t0 = op_pid, cp_pids, t0
        # t, rss, op cpu, cp cpu, own cpu, load, op threads, op sockets
        self.rows: list[tuple[float, float, float, float, float, float, int, int]] = []
        self.stop = threading.Event()

    def sample(self) -> None:
        rss, cpu = _rss_mib(self.op_pid), _cpu_seconds(self.op_pid)
        if rss is None or cpu is None:
            return
        for child in _tree(self.op_pid)[1:]:
            rss += _rss_mib(child) or 0.0
            cpu += _cpu_seconds(child) or 0.0
        cp = sum(c for c in (_cpu_seconds(p) for p in self.cp_pids) if c is not None)
        own = _cpu_seconds(os.getpid()) or 0.0
        self.rows.append((time.monotonic() - self.t0, rss, cpu, cp, own, os.getloadavg()[0], *_threads_sockets(self.op_pid)))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(1.0)

    def at(self, t: float) -> tuple:
        """The last sample at or before t (seconds since t0)."""
        before = [r for r in self.rows if r[0] <= t]
        return before[-1] if before else self.rows[0]


class Watcher(threading.Thread):
    """List + watch one resource cluster-wide; `on_event(obj, monotonic time)` for every object seen.
    A watch costs the API server nothing per tick, unlike polling with kubectl."""

    def __init__(self, api_client, group: str, version: str, plural: str, on_event):
        super().__init__(daemon=True, name=f"watch-{plural}")
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.args = (group, version, plural)
        self.on_event = on_event
        self.stopping = False
        self.ready = threading.Event()

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self.stopping:
            try:
                listing = self.api.list_cluster_custom_object(*self.args)
                now = time.monotonic()
                for obj in listing.get("items") or []:
                    self.on_event(obj, now)
                rv = listing["metadata"]["resourceVersion"]
                self.ready.set()
                while not self.stopping:
                    w = watch.Watch()
                    for event in w.stream(self.api.list_cluster_custom_object, *self.args, resource_version=rv,
                                          timeout_seconds=30, allow_watch_bookmarks=True):
                        if event["type"] == "ERROR":
                            raise ApiException(status=410)
                        rv = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.on_event(event["object"], time.monotonic())
                        if self.stopping:
                            w.stop()
                            break
            except Exception:  # noqa: BLE001 - relist (410 Gone, a dropped connection, the cluster stopping)
                if not self.stopping:
                    time.sleep(0.5)


class Observed:
    """First-seen times (monotonic) of what the watches saw."""

    def __init__(self):
        self.sts: dict[str, float] = {}
        self.ar_seen: dict[str, float] = {}
        self.ar_decided: dict[str, float] = {}
        self.ar_kind: dict[str, str] = {}
        self.ar_source: dict[str, str] = {}
        self.ar_decision: dict[str, str] = {}
        self.ar_kit: dict[str, float] = {}  # when the hub's kit annotation (ANNOTATION_KIT) was first seen
        self.compute_ready: dict[str, float] = {}
        self.job_approved: dict[str, float] = {}
        self.job_submit_pass: dict[str, float] = {}
        self.job_phase: dict[str, str] = {}
        self.job_ready_reason: dict[str, str] = {}

    def statefulset(self, obj: dict, now: float) -> None:
        meta = obj["metadata"]
        self.sts.setdefault(f"{meta['namespace']}/{meta['name']}", now)

    def access_request(self, obj: dict, now: float) -> None:
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        self.ar_seen.setdefault(key, now)
        self.ar_kind[key] = (spec.get("source") or {}).get("kind", "?")
        self.ar_source[key] = (spec.get("source") or {}).get("name", "?")
        if (meta.get("annotations") or {}).get(ANNOTATION_KIT):
            self.ar_kit.setdefault(key, now)
        if status.get("decision") in ("Approved", "Rejected") and status.get("decidedHash") == spec.get("contentHash"):
            self.ar_decided.setdefault(key, now)
            self.ar_decision[key] = status["decision"]

    def compute_spec(self, obj: dict, now: float) -> None:
        if (obj.get("status") or {}).get("phase") == "Ready":
            self.compute_ready.setdefault(obj["metadata"]["name"], now)

    def federated_job(self, obj: dict, now: float) -> None:
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or []}
        self.job_phase[name] = status.get("phase", "")
        self.job_ready_reason[name] = (conds.get("Ready") or {}).get("reason", "")
        if (conds.get("Approved") or {}).get("status") == "True":
            self.job_approved.setdefault(name, now)
        # The pass that submits: Queued and the FLARE API asked (ServerUnreachable with adminRoute none),
        # or Submitted/Running where a route exists.
        if status.get("phase") in ("Submitted", "Running") or (
                status.get("phase") == "Queued" and self.job_ready_reason[name] == "ServerUnreachable"):
            self.job_submit_pass.setdefault(name, now)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _wait(predicate, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _slope_mib_per_min(rows: list[tuple], start: float) -> float | None:
    points = [(r[0], r[1]) for r in rows if r[0] >= start]
    if len(points) < 5:
        return None
    mt = statistics.fmean(t for t, _ in points)
    mr = statistics.fmean(r for _, r in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return round(60 * sum((t - mt) * (r - mr) for t, r in points) / den, 2) if den else None


def _apiserver_flareop(cp) -> tuple[Counter, Counter, Counter]:
    """(apiserver_request_total on flareop.io resources, by verb (every client: the operator, Kopf, this
    bench); apiserver_request_duration_seconds' sum and count on them, by verb — what the server itself
    took, to set beside the operators' own view of a request's time, which includes their queueing;
    every write the server took, any group, by verb and resource — writes are most of its CPU)."""
    text = cp.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    out: Counter = Counter()
    took: Counter = Counter()
    writes: Counter = Counter()

    def label(labels: str, name: str) -> str:
        return labels.split(f'{name}="', 1)[1].split('"', 1)[0] if f'{name}="' in labels else ""

    for line in text.splitlines():
        labels, _, value = line.rpartition(" ")
        for part in ("sum", "count"):
            if line.startswith(f"apiserver_request_duration_seconds_{part}{{") and 'group="flareop.io"' in line:
                took[f"{part} {label(labels, 'verb')}"] += float(value)
        if not line.startswith("apiserver_request_total{"):
            continue
        verb, sub = label(labels, "verb"), label(labels, "subresource")
        key = f"{verb} {label(labels, 'resource')}{'/' + sub if sub else ''}"
        if verb not in ("GET", "LIST", "WATCH", "CONNECT"):
            writes[key] += float(value)
        if 'group="flareop.io"' in line:
            out[key] += float(value)
    return out, took, writes


def scrape_or_empty(port: int, tries: int = 3) -> dict:
    """The operator's metrics; {} when its metrics server does not answer (a starved process)."""
    for attempt in range(tries):
        try:
            return scrape(port)
        except OSError:
            time.sleep(1 + attempt)
    return {}


def _metric_sum(metrics: dict, prefix: str, **labels: str) -> float:
    return sum(v for k, v in metrics.items()
               if k.startswith(prefix + "{") and all(f'{lk}="{lv}"' in k for lk, lv in labels.items()))


def _summed(*scrapes: dict) -> dict:
    """Several processes' metrics as one (their counters added; {} if any of them did not answer)."""
    if not all(scrapes):
        return {}
    out: Counter = Counter()
    for metrics in scrapes:
        out.update(metrics)
    return dict(out)


def _operator_delta(before: dict, after: dict, seconds: float) -> dict | str:
    if not before or not after:
        return "no figures: a metrics server did not answer"

    def d(prefix: str, **labels: str) -> float:
        return _metric_sum(after, prefix, **labels) - _metric_sum(before, prefix, **labels)

    kinds = ("ComputeSpec", "FederatedJob", "AccessRequest", "Gateway")
    passes = {k: int(d("flareop_reconcile_total", kind=k)) for k in kinds}
    total_passes = sum(passes.values())
    requests = d("flareop_api_requests_total")
    mean_pass = {k: round(d("flareop_reconcile_duration_seconds_sum", kind=k) / passes[k], 3)
                 for k in kinds if passes[k]}
    return {
        "seconds": round(seconds, 1),
        "reconcile passes": passes,
        "reconcile errors": int(d("flareop_reconcile_total", result="error")),
        "mean pass s": mean_pass,
        "API requests": int(requests),
        "API requests by verb": {v: int(d("flareop_api_requests_total", verb=v))
                                 for v in ("GET", "PATCH", "PUT", "POST", "DELETE") if d("flareop_api_requests_total", verb=v)},
        "API requests per reconcile": round(requests / max(total_passes, 1), 2),
        "API requests per s": round(requests / max(seconds, 1e-9), 1),
        "mean API request s by verb": {
            v: round(d("flareop_api_request_duration_seconds_sum", verb=v)
                     / d("flareop_api_request_duration_seconds_count", verb=v), 3)
            for v in ("GET", "PATCH", "PUT", "POST", "DELETE") if d("flareop_api_request_duration_seconds_count", verb=v)},
        "status writes": int(d("flareop_status_writes_total")),
    }


# --- the scenario ---------------------------------------------------------------------------------


def org_name(i: int) -> str:
    return f"org-{i:03d}"


def compute_plan(orgs: int, computes: int) -> list[list[str]]:
    """Orgs of each ComputeSpec: sizes from min(10, N) to min(N, 64) spread evenly, orgs round-robin."""
    low, high = min(10, orgs), min(orgs, MAX_SITES)
    sizes = [round(low + (high - low) * i / max(computes - 1, 1)) for i in range(computes)]
    plans, cursor = [], 0
    for size in sizes:
        plans.append([org_name((cursor + j) % orgs) for j in range(size)])
        cursor = (cursor + size) % orgs
    return plans


def grant_of(org: str) -> dict:
    return grant(org, f"scl-{org}", MODELLER, privacy={"dpRequired": True, "maxEpsilonPerJob": 10, "epsilonBudget": 100})


class SampledOperator(OperatorProcess):
    """The operator under bench/stack_sampler.py (same command, same environment)."""

    def __init__(self, *args, sample_out: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_out = sample_out

    def start(self) -> SampledOperator:
        import subprocess

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.workdir), **self.env}
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "stack_sampler.py"), str(self.sample_out), "-m", "flare_operator.cli", "run",
             "--config", str(self.config_path), "--kubeconfig", str(self.kubeconfig), *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self


def run_size(n: int, args, work: Path, deadline: float) -> dict:
    """One org count in its own control plane; returns the report's rows."""
    t_size = time.monotonic()
    rows: dict = {"orgs": n}
    plans = compute_plan(n, args.computes)
    cp = ControlPlane.start(work / f"cluster-{n}", f"scale{n}", nodes=2,
                            extra_args=["--node-cpu", "4000", "--node-memory", "16Ti", "--node-pods", "2000"])
    procs: dict[str, OperatorProcess] = {}  # HUB, GATEWAYS
    samplers: dict[str, ProcSampler] = {}
    watchers: list[Watcher] = []
    api = None
    try:
        rows["control plane start s"] = round(cp.startup_seconds or 0, 1)
        install_crds(cp)
        orgs = [org_name(i) for i in range(n)]
        apply(cp, *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {LABEL_ORG: ns}}}
                    for ns in (MODELLER, "baseline", *orgs)))
        apply(cp, *(obj for org in orgs for obj in (grant_of(org), policy(org, "Automatic"))))
        sites = [dict(gateway_config(o, o), runtime="kubernetes") for o in orgs]
        ports = {HUB: free_port()}
        ports[GATEWAYS] = next(p for p in iter(free_port, None) if p != ports[HUB])
        common = {"runtime": "kubernetes", "adminRoute": "none", "resyncSeconds": args.resync, "heartbeatSeconds": 10}
        # The hub: the orchestrator on every namespace (namespaces: [], as mode all had it), no gateways.
        # The sites: one process, every org's gateway, a workdir of its own.
        configs = {
            HUB: {"mode": "orchestrator", **common, "workdir": str(work / f"flare-{n}"), "gateways": [],
                  "metricsPort": ports[HUB]},
            GATEWAYS: {"mode": "gateway", **common, "workdir": str(work / f"flare-{n}-gateways"), "gateways": sites,
                       "metricsPort": ports[GATEWAYS]},
        }
        for who, config in configs.items():
            if args.profile or args.tracemalloc:
                env = {"STACK_TRACEMALLOC": "1"} if args.tracemalloc else {}
                procs[who] = SampledOperator(cp, work, config, name=f"{who}-{n}", sample_out=stacks(work, n, who),
                                             env=env).start()
            else:
                procs[who] = OperatorProcess(cp, work, config, name=f"{who}-{n}").start()
        t0 = time.monotonic()
        op_pids = {op.proc.pid for op in procs.values()}
        cp_pids = [p for p in cp.pids if p not in op_pids]
        for who, op in procs.items():
            samplers[who] = ProcSampler(op.proc.pid, cp_pids, t0)
            samplers[who].start()

        api = cp.api_client()
        seen = Observed()
        gateways: set[str] = set()
        watchers = [
            Watcher(api, "apps", "v1", "statefulsets", seen.statefulset),
            Watcher(api, GROUP, VERSION, "accessrequests", seen.access_request),
            Watcher(api, GROUP, VERSION, "computespecs", seen.compute_spec),
            Watcher(api, GROUP, VERSION, "federatedjobs", seen.federated_job),
            Watcher(api, GROUP, VERSION, "gateways",
                    lambda obj, now: gateways.add(obj["metadata"]["namespace"])),
        ]
        for w in watchers:
            w.start()
        for w in watchers:
            w.ready.wait(60)

        # -- setup: every gateway registered (the gateways are up and watching) and the hub's metrics
        # server answering (it starts right before the hub's Kopf operators) --------------------------
        registered = _wait(lambda: len(gateways) >= n, timeout=max(10.0, min(300, deadline - time.monotonic())))
        hub_up = registered and _wait(lambda: bool(scrape_or_empty(ports[HUB], tries=1)), timeout=60)
        t_up = time.monotonic()
        rows["operators start -> all Gateways registered s"] = round(t_up - t0, 1) if registered else (
            f"timeout: {len(gateways)}/{n}")
        if not registered or not hub_up:
            raise TimeoutError(f"gateways registered: {len(gateways)}/{n}, hub metrics answering: {hub_up}\n"
                               + "\n".join(f"--- {op.log_path.name}\n{op.tail(30)}" for op in procs.values()))
        metrics0 = {who: scrape_or_empty(port) for who, port in ports.items()}
        (apiserver0, took0, writes0), t_batch = _apiserver_flareop(cp), time.monotonic()
        cp_cpu0 = _cpu_by_name(cp_pids)
        for who in procs:  # --tracemalloc: allocation growth is counted from here
            Path(f"{stacks(work, n, who)}.mark").touch()

        # -- the batch: 10 ComputeSpecs back to back, then 10 FederatedJobs in one apply --------------------
        started: dict[str, float] = {}
        wanted: dict[str, set[str]] = {}
        for i, members in enumerate(plans):
            name = f"cs-{i:02d}"
            fed = naming.federation_name(MODELLER, name)
            wanted[name] = {f"{MODELLER}/{naming.server_name(fed)}"} | {
                f"{org}/{naming.client_name(fed, org)}" for org in members}
            started[name] = time.monotonic()
            apply(cp, compute(MODELLER, name, [(org, f"scl-{org}") for org in members]))
        jobs = [job(MODELLER, f"job-{i:02d}", epsilon=6, compute_name=f"cs-{i:02d}") for i in range(len(plans))]
        names = [j["metadata"]["name"] for j in jobs]
        t_jobs = time.monotonic()
        apply(cp, *jobs)
        rows["computespecs"] = len(plans)
        rows["sites per computespec"] = " ".join(str(len(m)) for m in plans)
        # Until every job reached its submission pass, leaving time to sample the idle operator and
        # run the baseline (args.settle + a reserve for the baseline and the teardown).
        reserve = args.settle + 30
        finished = _wait(lambda: all(nm in seen.job_submit_pass for nm in names),
                         timeout=max(10.0, deadline - time.monotonic() - reserve), interval=0.5)
        t_batch_end = time.monotonic()
        cp_cpu1 = _cpu_by_name(cp_pids)
        rows["object sizes after the batch (mean JSON bytes)"] = object_sizes(api)
        rows["batch (apply -> every job at its submission pass) s"] = (
            round(t_batch_end - t_batch, 1) if finished else f"not finished: cut at {t_batch_end - t_batch:.0f} s")

        done = {k: max(seen.sts[s] for s in w) - started[k] for k, w in wanted.items() if w <= seen.sts.keys()}
        op_values = list(done.values())
        ready_values = [t - started[k] for k, t in dict(seen.compute_ready).items() if k in started]
        kinds = dict(seen.ar_kind)
        decided = dict(seen.ar_decided)
        first_apply = min(started.values())

        def ar_row(kind: str | None) -> dict:
            keys = [k for k, v in kinds.items() if kind is None or v == kind]
            times = [decided[k] for k in keys if k in decided]
            return {"count": len(keys), "decided": len(times),
                    "first apply -> all decided s": round(max(times) - first_apply, 1)
                    if times and len(times) == len(keys) else None,
                    "rejected": sum(1 for k in keys if seen.ar_decision.get(k) == "Rejected")}

        expected_ars = 2 * sum(len(m) for m in plans)
        rows["AccessRequests (expected: 2 x sites)"] = {"expected": expected_ars, **ar_row(None)}
        rows["compute AccessRequests"] = ar_row("Compute")
        rows["job AccessRequests"] = ar_row("Job")
        rows["ComputeSpec apply -> all StatefulSets"] = {
            "done": f"{len(done)}/{len(plans)}", "StatefulSets": f"{sum(len(w & seen.sts.keys()) for w in wanted.values())}"
                                                             f"/{sum(len(w) for w in wanted.values())}",
            "p50 s": _p50(op_values), "p95 s": _pct(op_values, 0.95), "max s": _pct(op_values, 1.0)}
        # Where a ComputeSpec's time to its StatefulSets goes, stage by stage (p50 over the ComputeSpecs
        # that got through each): every org's Compute answer, every client kit written (the hub's kit
        # annotation: provisioned), the server's StatefulSet, the last client's.
        compute_ars = {cs: [k for k, v in kinds.items() if v == "Compute" and seen.ar_source.get(k) == cs]
                       for cs in wanted}

        def stage(times: dict[str, list[float | None]]) -> float | None:
            return _p50([max(ts) - started[cs] for cs, ts in times.items() if ts and None not in ts])

        server_sts = {cs: next(s for s in w if s.startswith(f"{MODELLER}/")) for cs, w in wanted.items()}
        rows["ComputeSpec apply -> all StatefulSets, by stage (p50 s from the apply)"] = {
            "every org answered": stage({cs: [decided.get(k) for k in ks] for cs, ks in compute_ars.items()}),
            "every client kit written": stage({cs: [seen.ar_kit.get(k) for k in ks] for cs, ks in compute_ars.items()}),
            "server StatefulSet": stage({cs: [seen.sts.get(server_sts[cs])] for cs in wanted}),
            "every client StatefulSet": stage({cs: [seen.sts.get(s) for s in w - {server_sts[cs]}]
                                               for cs, w in wanted.items()})}
        rows["ComputeSpec apply -> Ready"] = {"done": f"{len(ready_values)}/{len(plans)}",
                                              "p50 s": _p50(ready_values), "p95 s": _pct(ready_values, 0.95)}
        # A job can be submitted once every org approved it and its ComputeSpec is Ready: the later of
        # the two, as the watches saw them, -> the operator's submission pass.
        job_ars = [k for k, v in kinds.items() if v == "Job"]
        submittable, approved_at = {}, {}
        for i, nm in enumerate(names):
            mine = [k for k in job_ars if seen.ar_source.get(k) == nm]
            if len(mine) == len(plans[i]) and all(k in decided for k in mine):
                approved_at[nm] = max(decided[k] for k in mine)
                ready = seen.compute_ready.get(f"cs-{i:02d}")
                if ready is not None:
                    submittable[nm] = max(approved_at[nm], ready)
        to_submit = [seen.job_submit_pass[nm] - submittable[nm] for nm in names
                     if nm in seen.job_submit_pass and nm in submittable]
        approved = [approved_at[nm] - t_jobs for nm in approved_at]
        rows["FederatedJob apply -> every org's answer"] = {
            "done": f"{len(approved)}/{len(names)}", "p50 s": _p50(approved), "p95 s": _pct(approved, 0.95)}
        rows["submittable (last approval or ComputeSpec Ready) -> submission pass (Queued, ServerUnreachable)"] = {
            "done": f"{len(to_submit)}/{len(names)}", "p50 s": _p50(to_submit), "p95 s": _pct(to_submit, 0.95),
            "max s": _pct(to_submit, 1.0)}
        at_pass = [seen.job_submit_pass[nm] - t_jobs for nm in names if nm in seen.job_submit_pass]
        rows["FederatedJob apply -> submission pass"] = {"done": f"{len(at_pass)}/{len(names)}",
                                                         "p50 s": _p50(at_pass), "p95 s": _pct(at_pass, 0.95)}
        waiting = Counter(f"{seen.job_phase.get(nm) or 'no status'}/{seen.job_ready_reason.get(nm) or '-'}"
                          for nm in names if nm not in seen.job_submit_pass)
        rows["jobs not at the submission pass (phase/Ready reason)"] = dict(waiting) or "none"
        metrics2 = {who: scrape_or_empty(port) for who, port in ports.items()}
        for who, label in deltas_of(n).items():
            rows[f"{label} during the batch"] = _operator_delta(
                *(metrics[who] if who else _summed(*metrics.values()) for metrics in (metrics0, metrics2)),
                t_batch_end - t_batch)
        apiserver2, took2, writes2 = _apiserver_flareop(cp)
        batch, took, writes = apiserver2 - apiserver0, took2 - took0, writes2 - writes0
        rows["API server: flareop.io requests during the batch"] = {
            "total": int(sum(batch.values())), "per s": round(sum(batch.values()) / max(t_batch_end - t_batch, 1e-9), 1),
            "top": {k: int(v) for k, v in batch.most_common(10)},
            "mean s the server took, by verb": {v: round(took[f"sum {v}"] / took[f"count {v}"], 3)
                                                for v in sorted({k.split()[1] for k in took}) if took[f"count {v}"]}}
        rows["API server: every write during the batch (any group)"] = {
            "total": int(sum(writes.values())), "top": {k: int(v) for k, v in writes.most_common(14)}}

        # -- settle: no new input; what the operators cost once the batch is (or is not yet) through ---
        t_settle = time.monotonic()
        time.sleep(max(0.0, min(args.settle, deadline - time.monotonic() - 30)))
        t_settle_end = time.monotonic()
        settled = t_settle_end - t_settle >= 5
        phase = settle_phase(finished)
        if settled:
            metrics3 = {who: scrape_or_empty(port) for who, port in ports.items()}
            apiserver3, _, _ = _apiserver_flareop(cp)
            for who, label in deltas_of(n).items():
                rows[f"{label} {phase}"] = _operator_delta(
                    *(metrics[who] if who else _summed(*metrics.values()) for metrics in (metrics2, metrics3)),
                    t_settle_end - t_settle)
            rows["API server: flareop.io requests per s in settle"] = round(
                sum((apiserver3 - apiserver2).values()) / (t_settle_end - t_settle), 1)
        else:
            rows[f"operators {phase}"] = "skipped: no time left"

        # -- baseline: the same StatefulSets, applied directly --------------------------------------------
        base_started, base_wanted = {}, {}
        stored = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in json.loads(
            cp.kubectl("get", "statefulsets", "-A", "-o", "json", timeout=300).stdout)["items"]}
        for cs, members in wanted.items():
            manifests = [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                          "metadata": {"name": f"b-{cs}-{j:03d}", "namespace": "baseline"},
                          "spec": stored[key]["spec"]} for j, key in enumerate(sorted(members)) if key in stored]
            if not manifests:
                continue
            base_started[cs] = time.monotonic()
            apply(cp, *manifests)
            base_wanted[cs] = {f"baseline/{m['metadata']['name']}" for m in manifests}
        _wait(lambda: all(w <= seen.sts.keys() for w in base_wanted.values()),
              timeout=max(10.0, deadline - time.monotonic() - 10))
        base_values = [max(seen.sts[s] for s in w) - base_started[k] for k, w in base_wanted.items()
                       if w <= seen.sts.keys()]
        rows["baseline (kubectl apply of the same StatefulSets, operator running)"] = {
            "done": f"{len(base_values)}/{len(base_wanted)}",
            "StatefulSets": sum(len(w) for w in base_wanted.values()),
            "p50 s": _p50(base_values), "p95 s": _pct(base_values, 0.95)}
        if op_values and base_values:
            rows["ratio p50 operator/baseline"] = round(statistics.median(op_values) / statistics.median(base_values), 2)
            rows["ratio p95 operator/baseline"] = round(_pct(op_values, 0.95) / _pct(base_values, 0.95), 2)

        # -- the two processes over time ------------------------------------------------------------------
        rel = lambda t: t - t0  # noqa: E731
        marks = {"batch": rel(t_batch), "batch end": rel(t_batch_end), "settle": rel(t_settle),
                 "settle end": rel(t_settle_end)}
        for who, sampler in samplers.items():
            sampler.sample()
            rows[who_label(who, n)] = process_rows(sampler, marks, settled, finished,
                                                   gateways=n if who == GATEWAYS else 0)
            log_text = procs[who].log_path.read_text(errors="replace")
            rows[who_label(who, n)]["log lines: ERROR, WARNING"] = [log_text.count(" ERROR "),
                                                                    log_text.count(" WARNING ")]
        hub = samplers[HUB]
        start_row, batch_row = hub.at(marks["batch"]), hub.at(marks["batch end"])
        rows["control plane CPU cores used: batch"] = _cpu_share(start_row, batch_row, 3)
        rows["control plane CPU cores used in the batch, by component"] = {
            name: round((cp_cpu1[name] - cp_cpu0[name]) / max(t_batch_end - t_batch, 1e-9), 2)
            for name in sorted(cp_cpu1, key=lambda k: cp_cpu0[k] - cp_cpu1[k])}
        rows["control plane CPU cores used: settle"] = _cpu_share(
            hub.at(marks["settle"]), hub.at(marks["settle end"]), 3) if settled else None
        rows["bench's own CPU cores used: batch"] = _cpu_share(start_row, batch_row, 4)
        rows["load average 1 min: start, end"] = [round(hub.rows[0][5], 2), round(hub.rows[-1][5], 2)]
        rows["wall s for this org count"] = round(time.monotonic() - t_size, 1)
        return rows
    finally:
        for w in watchers:
            w.stopping = True
        for sampler in samplers.values():
            sampler.stop.set()
        for who, op in procs.items():
            op.stop(timeout=20)  # a starved process with 2N Kopf operators may not finish cleanly sooner
            out = stacks(work, n, who)
            if out.exists():
                from bench.stack_sampler import summarise

                rows[f"{who_label(who, n)} threads sampled (--profile, {out.name})"] = summarise(str(out))
                if args.keep:
                    shutil.copy(out, Path(args.keep) / out.name)
            if args.keep:
                shutil.copy(op.log_path, Path(args.keep) / op.log_path.name)
        if api:
            api.close()
        cp.stop()


def _cpu_share(a: tuple, b: tuple, col: int) -> float:
    """Cores used between two samples (CPU seconds of column col per second)."""
    return round((b[col] - a[col]) / max(b[0] - a[0], 1e-9), 2)


def process_rows(sampler: ProcSampler, marks: dict[str, float], settled: bool, finished: bool,
                 gateways: int = 0) -> dict:
    """One operator process over time: RSS at the marks (seconds since t0), peak, the last part's slope
    and verdict, CPU, threads and sockets; with gateways > 0, RSS per gateway too."""
    s = sampler.rows
    start_row, batch_row = sampler.at(marks["batch"]), sampler.at(marks["batch end"])
    settle_row, last = sampler.at(marks["settle end"]), s[-1]
    # the last part: the settle window, or the last third of the run when there was none
    slope_from = marks["settle"] if settled else s[-1][0] * 2 / 3
    slope = _slope_mib_per_min(s, slope_from)
    peak = max(s, key=lambda r: r[1])
    cpu_1s = [(b[2] - a[2]) / max(b[0] - a[0], 1e-9) for a, b in zip(s, s[1:], strict=False)]
    out = {
        "RSS MiB at gateways registered": round(start_row[1], 1),
        "RSS MiB peak": round(peak[1], 1), "peak at s": round(peak[0], 0),
        "RSS MiB after the batch": round(batch_row[1], 1),
        "RSS MiB after settle": round(settle_row[1], 1), "RSS MiB at end": round(last[1], 1),
        "RSS slope over the last part MiB/min": slope,
        "last part": f"{slope_from:.0f}-{s[-1][0]:.0f} s" + (" (settle)" if settled else " (last third)"),
        "RSS verdict": None if slope is None else ("flat" if abs(slope) < 2.0 else
                                                   "growing" if slope > 0 else "shrinking")
        + ("" if finished else " (the batch was cut: still converging)"),
    }
    if gateways:
        out["RSS MiB per gateway (RSS / N, the process's base included): registered, peak, end"] = [
            round(r[1] / gateways, 2) for r in (start_row, peak, last)]
        out["RSS MiB per gateway grown from registered to end ((end - registered) / N)"] = round(
            (last[1] - start_row[1]) / gateways, 2)
    series_every = max(1, len(s) // 40)
    out |= {
        "CPU cores used: startup": _cpu_share(s[0], start_row, 2),
        "CPU cores used: batch": _cpu_share(start_row, batch_row, 2),
        "CPU cores used: settle": _cpu_share(sampler.at(marks["settle"]), settle_row, 2) if settled else None,
        "CPU cores used: peak 1 s": round(max(cpu_1s), 2) if cpu_1s else None,
        "CPU s total": round(last[2] - s[0][2], 1),
        "threads at gateways registered, peak": [start_row[6], max(r[6] for r in s)],
        "open sockets at gateways registered, peak, end": [start_row[7], max(r[7] for r in s), last[7]],
        "samples": len(s),
        f"s:RSS MiB/cumulative CPU s/sockets, every ~{series_every} s": " ".join(
            f"{r[0]:.0f}:{r[1]:.0f}/{r[2] - s[0][2]:.0f}/{r[7]}" for r in s[::series_every]),
    }
    return out


def growth(rows: dict) -> dict | str:
    """One entry per org count: the figures whose growth matters."""
    if "failed" in rows:
        return rows["failed"][:400]

    def g(*path, default=None):
        value = rows
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return default if value is None else value

    def p(row: str) -> str:
        r = g(row, default={})
        return f"{r.get('p50 s')}/{r.get('p95 s')} ({r.get('done')})"

    n = rows["orgs"]
    phase = settle_phase(not str(g("batch (apply -> every job at its submission pass) s", default="")).startswith("not"))
    hub, gws = (g(who_label(who, n), default={}) for who in (HUB, GATEWAYS))
    ars = g("AccessRequests (expected: 2 x sites)", default={})

    def delta(label: str, *key: str) -> list:
        """A figure of a process's (or both processes') Prometheus deltas: [batch, settle]."""
        return [g(f"{label} during the batch", *key), g(f"{label} {phase}", *key)]

    def ar_passes_per_s(label: str) -> list:
        return [round(passes / max(seconds or 1, 1e-9), 1) if passes is not None else None
                for passes, seconds in zip(delta(label, "reconcile passes", "AccessRequest"), delta(label, "seconds"),
                                           strict=True)]

    out = {
        "batch s": g("batch (apply -> every job at its submission pass) s"),
        "AccessRequests decided/existing/expected": f"{ars.get('decided')}/{ars.get('count')}/{ars.get('expected')}",
        "first apply -> all AccessRequests decided s": ars.get("first apply -> all decided s"),
        "ComputeSpec -> StatefulSets p50/p95 s": p("ComputeSpec apply -> all StatefulSets"),
        "baseline p50/p95 s": p("baseline (kubectl apply of the same StatefulSets, operator running)"),
        "ratio p50": g("ratio p50 operator/baseline"),
        "ComputeSpec -> Ready p50/p95 s": p("ComputeSpec apply -> Ready"),
        "submittable -> submission pass p50/p95 s": p(
            "submittable (last approval or ComputeSpec Ready) -> submission pass (Queued, ServerUnreachable)"),
    }
    for who, proc in ((HUB, hub), (GATEWAYS, gws)):
        label = who_label(who, n)
        out[f"{label} RSS MiB registered/peak/end"] = (
            f"{proc.get('RSS MiB at gateways registered')}/{proc.get('RSS MiB peak')}/{proc.get('RSS MiB at end')}")
        out[f"{label} RSS last part"] = (
            f"{proc.get('RSS verdict')} ({proc.get('RSS slope over the last part MiB/min')} MiB/min, "
            f"{proc.get('last part')})")
        if who == GATEWAYS:
            out[f"{label} RSS MiB per gateway (RSS / N) registered/peak/end"] = "/".join(
                str(v) for v in proc.get("RSS MiB per gateway (RSS / N, the process's base included): registered, "
                                         "peak, end", []))
        out[f"{label} CPU cores batch/settle"] = f"{proc.get('CPU cores used: batch')}/{proc.get('CPU cores used: settle')}"
    for label in deltas_of(n).values():
        out[f"{label} API requests per reconcile (batch, settle)"] = delta(label, "API requests per reconcile")
        out[f"{label} API requests per s (batch, settle)"] = delta(label, "API requests per s")
    out["AccessRequest passes per s, hub (batch, settle)"] = ar_passes_per_s(who_label(HUB, n))
    out["AccessRequest passes per s, gateways (batch, settle)"] = ar_passes_per_s(who_label(GATEWAYS, n))
    out["load average start, end"] = g("load average 1 min: start, end")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", default="10,50,100", help="org counts, comma-separated, each in a fresh control plane")
    parser.add_argument("--computes", type=int, default=10, help="ComputeSpecs (and FederatedJobs, one each)")
    parser.add_argument("--resync", type=float, default=5.0, help="the operator's resyncSeconds (its default: 5)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds of idle sampling after the batch")
    parser.add_argument("--budget", type=float, default=780.0, help="seconds for the whole run (all org counts)")
    parser.add_argument("--profile", action="store_true", help="sample both operator processes' threads (bench/stack_sampler.py)")
    parser.add_argument("--tracemalloc", action="store_true", help="--profile, and trace allocations (slower)")
    parser.add_argument("--keep", help="copy both operator processes' logs (and stack samples) into this folder")
    args = parser.parse_args()
    counts = [int(x) for x in args.orgs.split(",") if x.strip()]
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flareop-scale-"))
    t_all = time.monotonic()
    deadline = t_all + args.budget
    results = []
    try:
        for index, n in enumerate(counts):
            left = deadline - time.monotonic()
            # each remaining size gets a share of what is left by sqrt(N) (bigger sizes take longer), at
            # least 200 s (the smallest size is the reference: it should get through), at least 120 s
            # kept for each size after it
            share = n ** 0.5 / sum(c ** 0.5 for c in counts[index:])
            later = len(counts) - index - 1
            seconds = min(max(200.0, left * share), max(120.0, left - 120.0 * later))
            t_n = time.monotonic()
            try:
                rows = run_size(n, args, work, time.monotonic() + seconds)
            except Exception as err:  # noqa: BLE001 - report it and go on with the next size
                import traceback

                where = " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(traceback.extract_tb(err.__traceback__)[-4:]))
                rows = {"orgs": n, "failed": f"{type(err).__name__}: {str(err)[:2000]} (at {where})"}
            rows["wall s with setup and teardown"] = round(time.monotonic() - t_n, 1)
            results.append(rows)
            print(yaml.safe_dump([rows], sort_keys=False, width=140), flush=True)
        print(yaml.safe_dump({"growth with the org count": {r["orgs"]: growth(r) for r in results},
                              "bench wall s": round(time.monotonic() - t_all, 1),
                              "cores": os.cpu_count()}, sort_keys=False, width=140), flush=True)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
